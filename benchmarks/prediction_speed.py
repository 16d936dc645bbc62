"""Prediction time and peak memory for one 182x218x182 1 mm volume, through the real predictor.

The model folders come from ``bench_data``: the shared 1 mm phantom, planned by the real planner (the
CPU preset without a GPU), each model trained for a few iterations (quality is irrelevant; the
network and the work per voxel are what the plans make them). The input is the T1w image of the
held-out case of fold 0, at its original 182x218x182 grid of 1 mm; the target is CT.

Two kinds of run, each a child process of its own:
- **cli**: ``unisyn_predict -i <inputs> -o <out> -m <model> --target CT --device D``: wall time and
  peak RSS of the whole command (imports and start-up included), what a user waits for;
- **api**: ``UniSynPredictor.from_model_folder(...).predict(...)`` with the time split into loading
  the model, reading, preprocessing, the sliding window and the export, the number of tiles, and the
  peak RSS (CPU) or peak CUDA allocation above what the loaded model held;
- **cli_before**: the cli run with ``--threads 0``, torch's default threads as every command had before
  the thread policy (issue 21); beside **cli** (the policy, whose choice its ``--verbose`` log records)
  it measures the policy side by side. Without ``--threads`` the children inherit no thread setting.

    .venv/bin/python benchmarks/prediction_speed.py --quick --kinds cli_before cli --repeats 3 --out /tmp/bench_threads

    .venv/bin/python benchmarks/prediction_speed.py --quick --out /tmp/bench_predict
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench_common import (
    add_child_process_arguments, command_and_notes, parse_or_run_child,
    PeakMemory, child_env, command_line, current_rss_mib, machine_info, machine_line, md_table, median, run_child,
    synchronize, write_outputs,
)
from bench_data import DataSpec, ensure_model, prepare_dataset, use_work_folder

logger = logging.getLogger("benchmarks.prediction")

TARGET = "CT"


# ------------------------------------------------------------------------------------------- child
def child_api(spec: dict[str, Any]) -> dict[str, Any]:
    """One prediction through UniSynPredictor, timed per stage."""
    import numpy as np
    import torch

    from unisyn_v2.inference import predictor as module
    from unisyn_v2.models.sliding_window import compute_tile_starts

    use_work_folder(Path(spec["work"]))
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    stages: dict[str, float] = {}
    facts: dict[str, Any] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "sliding_window_s":
                image, tile = args[0], tuple(args[2])
                padded = [max(s, t) for s, t in zip(image.shape[1:], tile)]
                starts = compute_tile_starts(padded, tile, kwargs.get("step_size", 0.5))
                facts.update(network_input_zyx=list(image.shape[1:]), tile=list(tile),
                             tiles=int(np.prod([len(s) for s in starts])))
            started = time.perf_counter()
            out = function(*args, **kwargs)
            synchronize(device)
            stages[name] = round(stages.get(name, 0.0) + time.perf_counter() - started, 3)
            return out
        return wrapper

    for attribute, name in (("read_image", "read_s"), ("preprocess_case", "preprocess_s"),
                            ("sliding_window_predict", "sliding_window_s"), ("export_prediction", "export_s")):
        setattr(module, attribute, timed(name, getattr(module, attribute)))
    rss_start = current_rss_mib()
    started = time.perf_counter()
    settings = module.PredictionSettings(progress=False, use_mirroring=spec["tta"], tile_batch_size=spec["tile_batch"])
    predictor = module.UniSynPredictor.from_model_folder(spec["model"], folds=[0], device=device, settings=settings)
    synchronize(device)
    load_s = time.perf_counter() - started
    with PeakMemory(device, rss_baseline_mib=rss_start) as memory:
        started = time.perf_counter()
        written = predictor.predict([spec["inputs"]], spec["output"], TARGET, overwrite=True)
        synchronize(device)
        predict_s = time.perf_counter() - started
    return {"load_model_s": round(load_s, 3), "predict_s": round(predict_s, 3), **stages, **facts,
            "output": str(written[0]), "threads": torch.get_num_threads(), **memory.result}


# ------------------------------------------------------------------------------------------ parent
def make_inputs(spec: DataSpec, folder: Path) -> dict[str, Any]:
    """``folder/dataset.json`` + the T1w image of fold 0's first held-out case."""
    from unisyn_v2.dataset.description import load_dataset_description
    from unisyn_v2.dataset.image_io import read_image
    from unisyn_v2.experiment_planning.splits import fold_cases
    from unisyn_v2.io_utils import read_json, write_json_atomic
    from unisyn_v2.paths import preprocessed_dir, raw_dir

    use_work_folder(spec.work)
    name = next(p.name for p in raw_dir().glob(f"Dataset{spec.dataset_id:03d}_*"))
    _train, held_out = fold_cases(read_json(preprocessed_dir() / name / "splits_final.json"), 0, [])
    description = load_dataset_description(raw_dir() / name)
    case = description.case(held_out[0])
    t1 = next(image for image in case.images if image.modality == "T1w")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / case.case_id).mkdir(parents=True)
    shutil.copyfile(description.path_of(t1.file), folder / t1.file)
    write_json_atomic(folder / "dataset.json", {"name": "prediction benchmark input", "cases": [
        {"id": case.case_id, "subject": case.subject.to_dict(),
         "images": [{"file": t1.file, "modality": "T1w", "metadata": t1.metadata.to_dict()}]}]})
    image, geometry = read_image(folder / t1.file)
    return {"case": case.case_id, "shape_zyx": list(image.shape), "spacing_xyz_mm": [round(v, 3) for v in geometry.spacing_xyz]}


def policy_threads(log: Path) -> tuple[int | None, str | None]:
    """The threads and their source that ``unisyn_predict --verbose`` logged (the thread policy's line)."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    match = re.search(r"threads: (\d+) \(([^;]+);", text)
    return (int(match.group(1)), match.group(2)) if match else (None, None)


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Medians of the successful runs of one (model, kind)."""
    good = [r for r in runs if r["returncode"] == 0]
    keys = ("process_wall_s", "process_cpu_s", "process_max_rss_mib", "load_at_start", "predict_s", "load_model_s", "read_s", "preprocess_s",
            "sliding_window_s", "export_s", "peak_rss_increase_mib", "cuda_peak_increase_mib", "cuda_peak_allocated_mib")
    summary = {"runs": len(runs), "ok": len(good)}
    for k in keys:
        values = [r[k] for r in good if isinstance(r.get(k), (int, float))]
        if values:
            summary[f"median_{k}"] = round(median(values), 3)
    for k in ("tiles", "tile", "network_input_zyx"):
        summary[k] = next((r[k] for r in good if k in r), None)
    if key.startswith("cli"):
        summary["wall_s_per_run"] = [r["process_wall_s"] for r in good]
        summary["load_per_run"] = [r.get("load_at_start") for r in good]
        summary["threads_per_run"] = [r.get("policy_threads") for r in good]
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The report."""
    cuda = result["device"].startswith("cuda")
    inp = result["input"]
    lines = [machine_line(result["machine"]), "",
             f"Input: case {inp['case']} T1w, {'x'.join(map(str, inp['shape_zyx']))} voxels (z y x) at {inp['spacing_xyz_mm']} mm; "
             f"target {TARGET}; step 0.5, tile batch {result['tile_batch']}, mirroring TTA {'on' if result['tta'] else 'off'}; "
             f"plans preset `{result['data']['plans']['preset']}`; {result['repeats']} run(s) of each kind (alternating); "
             f"torch threads {result['threads'] or 'default'}.", ""]
    header = ["model", "network input (z y x)", "tile", "tiles", "unisyn_predict wall (s)", "unisyn_predict peak RSS (MiB)",
              "API predict (s)", "of which sliding window (s)", "preprocess (s)", "export (s)", "load model (s)",
              "API peak CUDA above model (MiB)" if cuda else "API peak RSS above start (MiB)"]
    rows = []
    for model, kinds in result["summary"].items():
        cli, api = kinds.get("cli", {}), kinds.get("api", {})
        rows.append([model, "x".join(map(str, api.get("network_input_zyx") or [])), "x".join(map(str, api.get("tile") or [])),
                     api.get("tiles"), cli.get("median_process_wall_s"), cli.get("median_process_max_rss_mib"),
                     api.get("median_predict_s"), api.get("median_sliding_window_s"), api.get("median_preprocess_s"),
                     api.get("median_export_s"), api.get("median_load_model_s"),
                     api.get("median_cuda_peak_increase_mib" if cuda else "median_peak_rss_increase_mib")])
    lines += md_table(header, rows)
    before = [(m, k["cli_before"], k["cli"]) for m, k in result["summary"].items() if "cli_before" in k and "cli" in k]
    if before:
        lines += ["", "Thread policy, side by side (`unisyn_predict --threads 0`, torch's default, against the policy; "
                  "medians, then per run: wall s @ 1-minute load at start, threads):", ""]
        rows = []
        for model, old, new in before:
            ratio = (old.get("median_process_wall_s") or 0) / max(new.get("median_process_wall_s") or 1e-9, 1e-9)
            runs = lambda s, threads: ", ".join(  # noqa: E731 - one row's formatting
                f"{w} s @ {l} ({t or threads})" for w, l, t in zip(s["wall_s_per_run"], s["load_per_run"], s["threads_per_run"]))
            rows.append([model, old.get("median_process_wall_s"), old.get("median_process_cpu_s"), runs(old, "default"),
                         new.get("median_process_wall_s"), new.get("median_process_cpu_s"), runs(new, "?"), round(ratio, 2)])
        lines += md_table(["model", "before wall (s)", "before CPU (s)", "before runs", "policy wall (s)", "policy CPU (s)",
                           "policy runs", "before / policy"], rows)
    lines += command_and_notes(result)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: the 2.5d GFM only, one run of each kind")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--models", nargs="+", default=None, metavar="TRAINER:CONFIG",
                        help="models to time (default gfm:2.5d gfm:3d unet:3d; gfm:2.5d with --quick)")
    parser.add_argument("--kinds", nargs="+", choices=("cli", "cli_before", "api"), default=["cli", "api"],
                        help="cli_before: unisyn_predict --threads 0 (torch's default threads, as before the thread policy)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each kind, alternating their order (default 1 quick, 3 full)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (2^n passes per tile)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default 4, unisyn_predict's)")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases (default 4 quick, 8 full)")
    parser.add_argument("--train-iterations", type=int, default=2, help="training iterations per model (default 2)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="planner budget (default: the GPU's free memory)")
    parser.add_argument("--work", type=Path, default=None, help="data/model folder, reused across runs (default $TMPDIR/unisyn_bench_data_<device>)")
    add_child_process_arguments(parser, "unisyn_prediction_speed",
                                threads_help="torch threads in the children, OMP_NUM_THREADS for the CLI (default: torch's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_run_child(build_parser(), argv, child_api)
    if args is None:
        return 0
    device = args.device
    if args.threads:  # the set-up work in this process (stage 1, the models to predict with) too
        import torch

        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.gettempdir()) / f"unisyn_bench_data_{device.split(':')[0]}"
    spec = DataSpec(work=work, cases=args.cases or (4 if args.quick else 8), gpu_memory_gb=args.gpu_memory_gb)
    models = args.models or (["gfm:2.5d"] if args.quick else ["gfm:2.5d", "gfm:3d", "unet:3d"])
    repeats = args.repeats or (1 if args.quick else 3)
    machine = machine_info(device)
    data = prepare_dataset(spec)
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = work / "prediction_inputs"
    input_facts = make_inputs(spec, inputs)
    env = child_env(**use_work_folder(work), **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    if not args.threads:  # the children choose their own threads (cli_before: torch's default; cli: the policy)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.pop(name, None)
    predict_bin = Path(sys.executable).parent / "unisyn_predict"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model in models:
        trainer, _, configuration = model.partition(":")
        folder = ensure_model(spec, trainer, configuration, device, args.train_iterations)
        runs[model] = {kind: [] for kind in args.kinds}
        for repeat in range(repeats):
            for kind in (args.kinds if repeat % 2 == 0 else args.kinds[::-1]):  # alternate the order
                tag = f"{trainer}_{configuration}_{kind}_{repeat}"
                output = work / "prediction_outputs" / tag
                load = round(os.getloadavg()[0], 2)
                if kind in ("cli", "cli_before"):
                    command = [str(predict_bin), "-i", str(inputs), "-o", str(output), "-m", str(folder), "--target", TARGET,
                               "--device", device, "--tile_batch_size", str(args.tile_batch), "--disable_progress_bar", "--overwrite"]
                    command += ["--tta"] if args.tta else []
                    command += ["--threads", "0"] if kind == "cli_before" else ["--verbose"]
                    record = run_child(command, None, args.out / f"{tag}.log", env, args.timeout)
                    record["policy_threads"], record["policy_source"] = policy_threads(args.out / f"{tag}.log")
                else:
                    child = {"work": str(work), "model": str(folder), "inputs": str(inputs), "output": str(output),
                             "device": device, "tta": args.tta, "tile_batch": args.tile_batch, "threads": args.threads,
                             "result": str(args.out / f"{tag}.json")}
                    record = run_child([sys.executable, __file__, "--child", json.dumps(child)], args.out / f"{tag}.json",
                                       args.out / f"{tag}.log", env, args.timeout)
                record["load_at_start"] = load
                runs[model][kind].append(record)
                logger.info("%s %s run %d: process %s s, max RSS %s MiB, sliding window %s s (load %.1f)", model, kind, repeat + 1,
                            record["process_wall_s"], record["process_max_rss_mib"], record.get("sliding_window_s", "-"), os.getloadavg()[0])
                shutil.rmtree(output, ignore_errors=True)
    machine["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    notes = [f"Models trained for {args.train_iterations} iterations (speed does not depend on training quality)."]
    if args.quick:
        notes.append("--quick times the 2.5d GFM only: on 2 CPU cores the 3d GFM's full-resolution 3D convolutions make one "
                     "prediction of this volume take many minutes (run without --quick, on a GPU).")
    result = {"machine": machine, "command": command_line("prediction_speed.py", argv), "device": device, "data": data,
              "input": input_facts, "tile_batch": args.tile_batch, "tta": args.tta, "threads": args.threads, "repeats": repeats, "runs": runs,
              "summary": {m: {k: summarise(v, k) for k, v in kinds.items()} for m, kinds in runs.items()}, "notes": notes}
    write_outputs(args.out, result, markdown(result))
    return 0 if all(r["returncode"] == 0 for kinds in runs.values() for rs in kinds.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
