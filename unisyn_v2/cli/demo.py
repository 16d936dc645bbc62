"""``unisyn_demo``: the whole pipeline on a generated phantom, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.demo import DemoOptions, run_demo


def main(argv: list[str] | None = None) -> int:
    """Make a phantom, plan, train NeuroCLIP and a GFM, predict T1w -> FDG-PET and T1w -> CT, evaluate."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("-d", "--dataset_id", type=int, default=900, help="id of the demo dataset (default 900)")
    parser.add_argument("--cases", type=int, default=20, help="phantom cases (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="GFM epochs (default: the plans', at most 60 unless --all_tasks)")
    parser.add_argument("--iterations_per_epoch", type=int, default=None)
    parser.add_argument("--neuroclip_epochs", type=int, default=None)
    parser.add_argument("-tr", "--trainer", default="gfm", help="stage-2 trainer (gfm, crossattn, onehot, unet, ...)")
    parser.add_argument("--all_tasks", action="store_true",
                        help="train every direction between the demo's modalities (default: T1w <-> FDG-PET and T1w <-> CT)")
    parser.add_argument("-pl", "--planner", default="auto", help="preset: auto (cpu without a GPU), small, medium, large, paper")
    parser.add_argument("--gpu_memory_gb", type=float, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    parser.add_argument("-o", "--output", type=Path, default=Path("unisyn_demo_output"), help="where predictions, figures and summaries go")
    add_common_arguments(parser)

    def body(args: argparse.Namespace) -> int:
        options = DemoOptions(dataset_id=args.dataset_id, cases=args.cases, seed=args.seed, neuroclip_epochs=args.neuroclip_epochs,
                              epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch, device=args.device,
                              gpu_memory_gb=args.gpu_memory_gb, planner=args.planner, trainer=args.trainer, all_tasks=args.all_tasks, output=args.output)
        report = run_demo(options)
        print("\nunisyn_v2 demo finished. Outputs:")
        for key in ("raw_dataset", "plans", "neuroclip_model", "synthesis_model", "figures"):
            print(f"  {key:16s} {report[key]}")
        for target, folder in report["predictions"].items():
            lowest = report.get("lowest_value", {}).get(target)
            print(f"  predictions {target:8s} {folder}" + (f"  (lowest value {lowest:.4g})" if lowest is not None else ""))
        for target, evaluation in report["evaluations"].items():
            mean = evaluation["mean"] or {}
            metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in mean.items())
            print(f"  T1w -> {target:8s} {metrics}  ({evaluation['summary']})")
        for task, psnr in report.get("validation", {}).items():
            print(f"  validation {task:16s} PSNR model {psnr['model']:.2f} dB, identity {psnr.get('identity', float('nan')):.2f}, "
                  f"histogram matching {psnr.get('histogram_matching', float('nan')):.2f} (reference protocol, brain)")
            if "model_bone_dice" in psnr:
                print(f"  validation {task:16s} head MAE {float(psnr['model_head_mae_hu']):.1f} HU, bone Dice "
                      f"{float(psnr['model_bone_dice']):.3f}, bone MAE {float(psnr['model_bone_mae']):.1f} HU")
        print(f"  report           {Path(args.output).resolve() / 'demo_report.json'}")
        return 0

    return run_cli(body, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
