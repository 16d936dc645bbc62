"""Synthesis quality on a paired phantom, in the layout of UniSyn Table 1/2.

Tasks: T1w->CT, CT->FDG-PET, T1w->FDG-PET, T1w->FLAIR, T1w->AV45-PET (Table 1), CT->T1w, T1w->T2w (Table 2).
Methods: the joint GFM (one model, every direction of every modality), task-specific GFMs (``gfm_task``),
the cross-attention baseline (TUMSyn's fusion, joint), the one-hot GFM (joint), a plain regression U-Net
(one per task), identity and histogram matching. Every learned method gets the same number of
iterations. Test cases are the fold's validation cases (never trained on), predicted from raw images
with ``UniSynPredictor`` and scored in raw space inside the brain mask: PSNR and SSIM with the papers'
protocol (each image to [0, 1] by its minimum and 99.5th percentile), MAE in HU for CT.

Run from the repository root:  .venv/bin/python benchmarks/synthesis_quality.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from unisyn_v2.training.settings import Task, task_key  # noqa: E402

logger = logging.getLogger("benchmarks.synthesis_quality")
BRAIN = "papers protocol with min and 99.5th percentile taken inside the brain mask, metrics in the brain mask"
IMAGE = "library `papers` protocol: whole-image min / 99.5th percentile, reference copied outside the brain"
TABLES = (("psnr", "PSNR (dB)", BRAIN, 2), ("ssim", "SSIM", BRAIN, 3),
          ("psnr_image", "PSNR (dB)", IMAGE, 2), ("ssim_image", "SSIM", IMAGE, 3))


@dataclass(frozen=True)
class Method:
    """One learned method: a trainer, its task filter, and the tasks it is scored on (None: all)."""

    label: str
    trainer: str
    tasks: tuple[Task, ...] | None = None


def methods(config: common.BenchmarkConfig) -> list[Method]:
    """Joint models first, then one task-specific GFM and one U-Net per configured task."""
    out = [Method("GFM (joint)", "gfm"), Method("CrossAttn (joint)", "crossattn"), Method("One-hot GFM (joint)", "onehot")]
    out += [Method("GFM task-specific", "gfm_task", (task,)) for task in config.task_specific]
    out += [Method("U-Net", "unet", (task,)) for task in config.task_specific]
    return out


def train_all(config: common.BenchmarkConfig, selected: list[Method]) -> dict[Method, Path]:
    """NeuroCLIP (stage 1) then every method (cached in the workspace)."""
    common.train(config, "neuroclip")
    return {m: common.train(config, m.trainer, m.tasks)[0] for m in selected}


def evaluate(config: common.BenchmarkConfig, folders: dict[Method, Path], tasks: tuple[Task, ...]) -> dict[str, Any]:
    """Per task and method: per-case scores and mean +- sd over the held-out cases."""
    train_ids, test_ids = common.split(config)
    cases = common.load_test_cases(config, test_ids)
    quantiles = common.reference_quantiles(config, train_ids, sorted({t for _, t in tasks}))
    rows: dict[str, dict[str, list[dict[str, float]]]] = {task_key(*t): {} for t in tasks}
    seconds: dict[str, float] = {}
    for method, folder in folders.items():
        predictor = common.load_predictor(config, folder)
        started, count = time.perf_counter(), 0
        for source, target in method.tasks or tasks:
            if (source, target) not in tasks:
                continue
            for case in cases:
                prediction = common.predict_raw(predictor, case.images[source], case.geometry, case.descriptions[source],
                                                case.descriptions[target], case.mask)
                scores = common.score(case.images[target], prediction, case.mask, target)
                rows[task_key(source, target)].setdefault(method.label, []).append({**scores, "case": case.case_id})
                count += 1
        name = method.label + (f" {task_key(*method.tasks[0])}" if method.tasks else "")
        seconds[name] = (time.perf_counter() - started) / max(count, 1)
        logger.info("%s: scored %d predictions (%.1f s each)", name, count, seconds[name])
    for source, target in tasks:
        for case in cases:
            for name, candidate in common.baselines(case.images[source], case.mask, quantiles[target]).items():
                scores = common.score(case.images[target], candidate, case.mask, target)
                if name == "identity":
                    scores.pop("mae_hu", None)  # the source is not in HU: an MAE in HU would be meaningless
                rows[task_key(source, target)].setdefault(name, []).append({**scores, "case": case.case_id})
    summary = {task: {label: common.summarise([{k: v for k, v in r.items() if k != "case"} for r in values])
                      for label, values in per_method.items()} for task, per_method in rows.items()}
    return {"test_cases": test_ids, "per_case": rows, "summary": summary, "seconds_per_prediction": seconds}


def markdown(config: common.BenchmarkConfig, result: dict[str, Any], labels: list[str]) -> str:
    """Tables: PSNR, SSIM (mean +- sd over test cases) per task and method; CT MAE in HU."""
    summary = result["summary"]
    columns = labels + ["identity", "histogram matching"]
    head = "| task | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    lines = [f"Test cases: {len(result['test_cases'])} held-out phantom subjects ({', '.join(result['test_cases'])}); "
             f"every learned method trained for {config.budget_text()} (batch from the plans).", ""]
    for key, title, protocol, digits in TABLES:
        lines += [f"**{title}**, {protocol}; mean ± sd:", "", head.rstrip("\n")]
        for task, per_method in summary.items():
            lines.append(f"| {task} | " + " | ".join(common.cell(per_method.get(c), key, digits) for c in columns) + " |")
        lines.append("")
    ct_tasks = [t for t in summary if t.endswith("->CT")]
    if ct_tasks:
        lines += ["**MAE (HU)** inside the brain mask (SynthRAD clipping to [-1024, 3000] HU), mean ± sd:", "", head.rstrip("\n")]
        for task in ct_tasks:
            lines.append(f"| {task} | " + " | ".join(common.cell(summary[task].get(c), "mae_hu", 1) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--skip-task-specific", action="store_true", help="only the joint models and the baselines")
    args = parser.parse_args(argv)
    config = common.make_config(args)
    common.setup(config, args.verbose)
    started = time.perf_counter()
    common.ensure_dataset(config)
    selected = [m for m in methods(config) if not (args.skip_task_specific and m.tasks)]
    folders = train_all(config, selected)
    trained = time.perf_counter()
    result = evaluate(config, folders, common.PAPER_TASKS)
    labels = list(dict.fromkeys(m.label for m in selected))
    result["training_seconds"] = {f"{m.label}{' ' + task_key(*m.tasks[0]) if m.tasks else ''}": common.training_seconds(config, f)
                                  for m, f in folders.items()}
    result["wall_seconds"] = {"until_trained": round(trained - started, 1), "total": round(time.perf_counter() - started, 1)}
    text = markdown(config, result, labels)
    common.write_results(config, "synthesis_quality", result, text)
    logger.info("synthesis quality done in %.0f s\n%s", time.perf_counter() - started, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
