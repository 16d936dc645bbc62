"""Training iterations/s per configuration and trainer, data-loader batches/s, and peak memory vs the plans.

On the shared 1 mm phantom of ``bench_data`` (planned by the real planner: the CPU preset without a
GPU, the planner's patch and batch for the GPU's memory with one), each (configuration, trainer) is
measured in a child process of its own:

- **step it/s**: ``train_step`` on batches built beforehand (network + loss + optimiser only), after
  ``--warmup`` steps;
- **end-to-end it/s**: ``train_step(next(loader))`` with the trainer's own loader and
  ``--e2e-workers`` background workers (default: what ``unisyn_train`` uses on this machine);
- **memory**: on CUDA the peak allocated memory from the first step on (weights, gradients, Adam state,
  activations, the batch) against the planner's estimate (``estimated_memory_gb`` in the plans, the
  GFM at fp32 activations; the trainers run under fp16 autocast on CUDA) and the budget
  (``gpu_memory_gb``); on the CPU the peak RSS above the RSS before the trainer was built.

The loader alone (batches/s, per configuration, for each ``--loader-workers`` count) is measured in
children too. Run from the repository root::

    .venv/bin/python benchmarks/training_throughput.py --quick --out /tmp/bench_train
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    add_child_process_arguments, command_and_notes, parse_or_run_child,
    PeakMemory, child_env, command_line, current_rss_mib, machine_info, machine_line, md_table, peak_rss_mib,
    run_child, synchronize, write_outputs,
)
from bench_data import DataSpec, ensure_text_encoder, prepare_dataset, trainer_tasks, use_work_folder

logger = logging.getLogger("benchmarks.training")

TRAINERS = ("gfm", "crossattn", "unet")
CONFIGURATIONS = ("2.5d", "3d")


# ------------------------------------------------------------------------------------------- child
def _trainer(spec: dict[str, Any], num_workers: int) -> Any:
    from unisyn_v2.training.run_training import build_trainer
    from unisyn_v2.training.settings import TrainerSettings

    use_work_folder(Path(spec["work"]))
    settings = TrainerSettings(num_workers=num_workers, final_validation=False, tasks=trainer_tasks(spec["trainer"]),
                               batch_size=spec.get("batch_size"))
    return build_trainer(spec["dataset_id"], spec["trainer"], 0, spec["configuration"], device=spec["device"], settings=settings)


def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Step and end-to-end iterations/s of one trainer and configuration, with peak memory."""
    import importlib

    import torch

    from unisyn_v2.models.registry import resolve_trainer_class

    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    importlib.import_module("unisyn_v2.training.run_training")  # imports are not counted in the memory growth
    resolve_trainer_class(spec["trainer"])
    torch.ones(1).to(device).sum()  # the device's runtime, not counted either
    rss_before = current_rss_mib()
    trainer = _trainer(spec, spec["e2e_workers"])
    trainer.initialize()
    if spec.get("channels_last"):  # a candidate speed-up measured here, not used by the trainers
        trainer.network.to(memory_format=torch.channels_last_3d if spec["configuration"] == "3d" else torch.channels_last)
    iterator = iter(trainer.train_loader)
    batches = [next(iterator) for _ in range(min(spec["steps"], 4))]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory(device, rss_baseline_mib=rss_before) as memory:  # CPU: network and optimiser count too
        for i in range(spec["warmup"]):
            trainer.train_step(batches[i % len(batches)])
        synchronize(device)
        started = time.perf_counter()
        for i in range(spec["steps"]):
            trainer.train_step(batches[i % len(batches)])
        synchronize(device)
        step_s = (time.perf_counter() - started) / spec["steps"]
    e2e_s = None
    if spec["e2e_steps"]:
        started = time.perf_counter()
        for _ in range(spec["e2e_steps"]):
            trainer.train_step(next(iterator))
        synchronize(device)
        e2e_s = (time.perf_counter() - started) / spec["e2e_steps"]
    trainer.train_loader.close()
    config = trainer.plans.configuration(spec["configuration"])
    result = {"batch_size": trainer.batch_size, "patch_size": list(trainer.patch_size),
              "parameters": sum(p.numel() for p in trainer.network.parameters()),
              "step_it_per_s": round(1.0 / step_s, 3), "step_s": round(step_s, 3),
              "e2e_it_per_s": None if e2e_s is None else round(1.0 / e2e_s, 3),
              "e2e_s": None if e2e_s is None else round(e2e_s, 3), "warmup": spec["warmup"], "steps": spec["steps"],
              "e2e_steps": spec["e2e_steps"],
              "planner_estimated_memory_gb": config.estimated_memory_gb, "planner_batch_size": config.batch_size,
              "planner_budget_gb": trainer.plans.gpu_memory_gb, "amp": bool(trainer.use_amp),
              "threads": torch.get_num_threads(), "channels_last": bool(spec.get("channels_last")), **memory.result}
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


def child_loader(spec: dict[str, Any]) -> dict[str, Any]:
    """Batches/s of the training loader alone, with ``spec["workers"]`` background workers."""
    trainer = _trainer(spec, spec["workers"])
    loader, _ = trainer.build_dataloaders()
    iterator = iter(loader)
    started = time.perf_counter()
    first = next(iterator)  # includes starting the workers and opening the memory maps
    first_s = time.perf_counter() - started
    for _ in range(spec["warmup"]):
        next(iterator)
    started = time.perf_counter()
    for _ in range(spec["batches"]):
        next(iterator)
    elapsed = time.perf_counter() - started
    loader.close()
    return {"workers": spec["workers"], "batch_size": int(first["source"].shape[0]), "first_batch_s": round(first_s, 3),
            "batches_per_s": round(spec["batches"] / elapsed, 3),
            "samples_per_s": round(spec["batches"] * int(first["source"].shape[0]) / elapsed, 2)}


# ------------------------------------------------------------------------------------------ parent
def markdown(result: dict[str, Any]) -> str:
    """The report."""
    cuda = result["device"].startswith("cuda")
    data, plans = result["data"], result["data"]["plans"]
    lines = [machine_line(result["machine"]), "",
             f"Data: {data['cases']} phantom cases ({', '.join(data['modalities'])}) of {'x'.join(map(str, data['shape_zyx']))} voxels "
             f"at {data['voxel_size_xyz_mm'][0]} mm; plans: preset `{plans['preset']}`, budget "
             f"{plans['gpu_memory_gb'] if plans['gpu_memory_gb'] is not None else 'CPU default 4.0'} GB. "
             f"Steps per row: warm-up + timed (+ end-to-end, with {result['e2e_workers']} loader worker(s)): "
             + ", ".join(f"{c} {s['warmup']} + {s['steps']} (+ {s['e2e_steps']})" for c, s in result["schedule"].items())
             + f". Torch threads in the children: {result['training'][0].get('threads', '?') if result['training'] else '?'}.", ""]
    mem = "peak CUDA allocated (MiB)" if cuda else "peak RSS above start (MiB)"
    header = ["config", "trainer", "patch", "batch", "params", "step it/s (s/step)", "end-to-end it/s", mem,
              "planner estimate, GFM (MiB)", "measured / estimate"]
    rows = []
    for r in result["training"]:
        if r["returncode"] != 0:
            rows.append([r["configuration"], r["trainer"], "", "", "", "failed", "", "", "", ""])
            continue
        measured = r["cuda_peak_allocated_mib"] if cuda else r["peak_rss_increase_mib"]
        estimate = r["planner_estimated_memory_gb"] * 1024
        rows.append([r["configuration"], r["trainer"] + (" (channels_last)" if r.get("channels_last") else ""),
                     "x".join(map(str, r["patch_size"])), r["batch_size"],
                     f"{r['parameters'] / 1e6:.2f} M", f"{r['step_it_per_s']} ({r['step_s']})",
                     "not run" if r["e2e_it_per_s"] is None else r["e2e_it_per_s"], measured,
                     round(estimate), f"{measured / estimate:.2f}" if estimate else ""])
    lines += md_table(header, rows)
    lines += ["", "Data loader alone (batches/s; samples/s; time to the first batch, which includes starting workers):", ""]
    lines += md_table(["config", "workers", "batch", "batches/s", "samples/s", "first batch (s)"],
                      [[r["configuration"], r["workers"], r.get("batch_size"), r.get("batches_per_s", "failed"),
                        r.get("samples_per_s"), r.get("first_batch_s")] for r in result["loader"]])
    lines += command_and_notes(result)
    return "\n".join(lines) + "\n"


def schedule_for(configuration: str, args: argparse.Namespace) -> dict[str, int]:
    """Warm-up, timed and end-to-end steps; --quick keeps 3d to one step (a 3d GFM step takes minutes on 2 cores)."""
    quick_3d = args.quick and configuration == "3d"
    warmup = args.warmup if args.warmup is not None else (0 if quick_3d else 3)
    steps = args.steps or (1 if quick_3d else 5 if args.quick else 20)
    e2e = args.e2e_steps if args.e2e_steps is not None else (0 if quick_3d else steps)
    return {"warmup": warmup, "steps": steps, "e2e_steps": e2e}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized run: 4 cases; 2.5d 3 warm-up + 5 timed + 5 end-to-end steps, 3d 1 timed step only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--trainers", nargs="+", default=list(TRAINERS), help=f"default {' '.join(TRAINERS)}")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), help="default 2.5d 3d")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases (default 4 quick, 8 full)")
    parser.add_argument("--shape", type=int, nargs=3, default=(182, 218, 182), metavar=("Z", "Y", "X"))
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="planner budget (default: the GPU's free memory with --device cuda, none on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the plans' batch")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time every trainer with its network in channels_last(_3d) memory format (alternating)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; quick 0 for 3d)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps, also end-to-end (default 20; quick 5 for 2.5d, 1 for 3d)")
    parser.add_argument("--e2e-steps", type=int, default=None, help="end-to-end steps (default --steps; quick 0 for 3d)")
    parser.add_argument("--e2e-workers", type=int, default=None, help="loader workers for end-to-end it/s (default: unisyn_train's)")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=None, help="worker counts for the loader alone (default 0 and unisyn_train's)")
    parser.add_argument("--loader-batches", type=int, default=None, help="timed loader batches (default 30 quick, 100 full)")
    parser.add_argument("--work", type=Path, default=None, help="data/model folder, reused across runs (default $TMPDIR/unisyn_bench_data_<device>)")
    add_child_process_arguments(parser, "unisyn_training_throughput")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_run_child(build_parser(), argv, lambda spec: child_loader(spec) if spec["mode"] == "loader" else child_train(spec))
    if args is None:
        return 0
    from unisyn_v2.training.settings import default_num_workers

    device = args.device
    if args.threads:  # the set-up work in this process (stage 1, the models to predict with) too
        import torch

        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.gettempdir()) / f"unisyn_bench_data_{device.split(':')[0]}"
    spec = DataSpec(work=work, cases=args.cases or (4 if args.quick else 8), shape=tuple(args.shape),  # type: ignore[arg-type]
                    gpu_memory_gb=args.gpu_memory_gb)
    schedule = {c: schedule_for(c, args) for c in args.configurations}
    e2e_workers = default_num_workers() if args.e2e_workers is None else args.e2e_workers
    loader_workers = args.loader_workers or sorted({0, default_num_workers()})
    machine = machine_info(device)
    data = prepare_dataset(spec)
    if any(t != "unet" for t in args.trainers):
        ensure_text_encoder(spec, device)
    args.out.mkdir(parents=True, exist_ok=True)
    env = child_env(**({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    base = {"work": str(work), "dataset_id": spec.dataset_id, "device": device, "batch_size": args.batch_size,
            "threads": args.threads}
    training, loader = [], []
    for configuration in args.configurations:
        variants = [(False, True), (True, False)] if args.channels_last else [(False,)]
        for index, trainer in enumerate(args.trainers):
            for channels_last in variants[index % len(variants)]:
                tag = f"train_{configuration}_{trainer}" + ("_cl" if channels_last else "")
                child = {**base, **schedule[configuration], "mode": "train", "configuration": configuration, "trainer": trainer,
                         "e2e_workers": e2e_workers, "channels_last": channels_last, "result": str(args.out / f"{tag}.json")}
                record = run_child([sys.executable, __file__, "--child", json.dumps(child)], args.out / f"{tag}.json",
                                   args.out / f"{tag}.log", env, args.timeout)
                training.append({"configuration": configuration, "trainer": trainer, **record})
                logger.info("%s %s%s: step %s it/s, end-to-end %s it/s (load %.1f)", configuration, trainer,
                            " channels_last" if channels_last else "", record.get("step_it_per_s"), record.get("e2e_it_per_s"),
                            os.getloadavg()[0])
        for workers in loader_workers:
            tag = f"loader_{configuration}_w{workers}"
            child = {**base, "mode": "loader", "configuration": configuration, "trainer": "gfm", "workers": workers,
                     "batches": args.loader_batches or (30 if args.quick else 100), "warmup": max(2, workers + 1),
                     "result": str(args.out / f"{tag}.json")}
            record = run_child([sys.executable, __file__, "--child", json.dumps(child)], args.out / f"{tag}.json",
                               args.out / f"{tag}.log", env, args.timeout)
            loader.append({"configuration": configuration, **record})
            logger.info("loader %s, %d workers: %s batches/s", configuration, workers, record.get("batches_per_s"))
    machine["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    notes = ["Training quality is irrelevant here: the text encoder comes from a 2-iteration stage-1 run."]
    if not device.startswith("cuda"):
        notes.append("CPU: the planner's estimate assumes the budget of a GPU; on the CPU it is compared with the peak RSS "
                     "growth from building the trainer to the last step (allocator caching and the loader included).")
    result = {"machine": machine, "command": command_line("training_throughput.py", argv), "device": device,
              "data": data, "schedule": schedule, "e2e_workers": e2e_workers, "training": training,
              "loader": loader, "notes": notes}
    write_outputs(args.out, result, markdown(result))
    return 0 if all(r["returncode"] == 0 for r in training + loader) else 1


if __name__ == "__main__":
    sys.exit(main())
