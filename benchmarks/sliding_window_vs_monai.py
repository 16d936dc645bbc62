"""unisyn_v2's Gaussian sliding window vs MONAI's ``sliding_window_inference(mode="gaussian")``.

Both methods get the same network (same weights), the same volume, the same patch size, the same
overlap (our ``step_size = 1 - overlap``) and the same tile batch. Every timed run is a child process
of its own (so that its peak RSS is its own), the methods alternate (A B, B A, ...) and the numbers
are medians over ``--repeats``. A run times one whole call, including moving the volume to the device
and the result back to host memory for both methods, after one warm-up forward pass on a tile batch.

Agreement is checked twice:
- with each library's defaults, the max/mean absolute difference of the two outputs. These differ a
  little by design: MONAI places the last tile at ``size - tile`` with a fixed interval, we spread the
  tiles evenly (nnU-Net's rule); MONAI's Gaussian is centred on ``tile // 2`` with a 1e-3 floor, ours on
  ``(tile - 1) / 2`` with a 1e-4 floor;
- on a volume whose tile grid is the same for both rules, with our Gaussian handed to MONAI as
  ``roi_weight_map``: the same computation, so the difference must be float rounding only.

MONAI lives in its own venv (never in ``.venv``); pin torch so pip keeps the local CPU wheel::

    python3 -m venv .venv_monai
    .venv_monai/bin/pip install torch==2.13.0 monai dynamic-network-architectures==0.3.1
    .venv/bin/python benchmarks/sliding_window_vs_monai.py --quick --out /tmp/bench_sw

The children run under ``--monai-python`` with the repository on PYTHONPATH (unisyn_v2's networks and
sliding window need only torch and dynamic-network-architectures), so both methods use the same torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bench_common import (
    add_child_process_arguments, command_and_notes, parse_or_run_child,
    REPO, PeakMemory, child_env, command_line, machine_info, machine_line, md_table, median, run_child,
    synchronize, write_outputs,
)

logger = logging.getLogger("benchmarks.sliding_window")

DEFAULT_MONAI_PYTHON = REPO / ".venv_monai" / "bin" / "python"
QUICK_CASES = ("pointwise@182x218x182", "unet@96x112x96")
FULL_CASES = ("pointwise@182x218x182", "unet@182x218x182", "gfm@182x218x182")
NETWORKS = ("pointwise", "unet", "gfm")


# ------------------------------------------------------------------------------------------- child
class Elementwise(nn.Module):
    """1.5 x - 0.3: no spatial context and (unlike a 1x1x1 Conv3d on the CPU) nearly no cost."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.5 * x - 0.3


def build_network(kind: str, preset_name: str, device: str) -> tuple[Callable[[Any], Any], tuple[int, int, int], int]:
    """(predictor fn (B, 1, *tile) -> (B, 1, *tile), tile, parameters) of a 3D network with seeded weights."""
    from unisyn_v2.experiment_planning.planner import network_kwargs, unet_kwargs
    from unisyn_v2.experiment_planning.presets import get_preset
    from unisyn_v2.networks.factory import build_synthesis_network

    torch.manual_seed(0)
    preset = get_preset(preset_name)
    tile = tuple(int(t) for t in preset.volume_patch)
    if kind == "pointwise":  # elementwise, almost free: what is left is the tiling/blending cost
        network: nn.Module = Elementwise()
    elif kind == "unet":
        network = build_synthesis_network("unet", unet_kwargs(preset, False, tile))
    elif kind == "gfm":
        network = build_synthesis_network("gfm", network_kwargs(preset, False, tile, preset.text_encoder.embed_dim))
    else:
        raise ValueError(f"unknown network {kind!r}; choose from {NETWORKS}")
    network = network.to(device).eval()
    parameters = sum(p.numel() for p in network.parameters())
    if kind == "pointwise":
        return network, tile, parameters  # type: ignore[return-value]
    text = torch.randn(1, preset.text_encoder.embed_dim, device=device)

    def predict(x: Any) -> Any:
        out = network(x, text.expand(x.shape[0], -1), text.expand(x.shape[0], -1))
        return getattr(out, "synthesis", out)

    return predict, tile, parameters


def run_method(method: str, image: Any, predictor: Callable[[Any], Any], tile: tuple[int, int, int], overlap: float,
               tile_batch: int, device: str, weight_map: Any = None) -> Any:
    """One whole sliding-window call; (C, Z, Y, X) on the CPU in, float32 (C, Z, Y, X) on the CPU out."""
    if method == "ours":
        from unisyn_v2.models.sliding_window import sliding_window_predict

        return sliding_window_predict(image, predictor, tile, step_size=1.0 - overlap, use_gaussian=True,
                                      tile_batch_size=tile_batch, device=device)
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(image[None].to(device), tile, tile_batch, predictor, overlap=overlap,
                                       mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0,
                                       sw_device=device, device=device, roi_weight_map=weight_map)
        return out[0].to("cpu", torch.float32)


def child_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one call of one method and record its peak memory; optionally save the output."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    predictor, tile, parameters = build_network(spec["network"], spec["preset"], device)
    generator = torch.Generator().manual_seed(1)
    image = torch.rand((1, *spec["shape"]), generator=generator)
    with torch.inference_mode():  # warm-up: thread pools, cuDNN/oneDNN kernels
        predictor(torch.rand((spec["tile_batch"], 1, *tile)).to(device))
    synchronize(device)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        output = run_method(spec["method"], image, predictor, tile, spec["overlap"], spec["tile_batch"], device)
        synchronize(device)
        elapsed = time.perf_counter() - started
    if spec.get("save"):
        np.save(spec["save"], output.numpy())
    return {"time_s": round(elapsed, 3), "tile": list(tile), "parameters": parameters, "threads": torch.get_num_threads(),
            "output_mean": float(output.mean()), **memory.result}


def aligned_shape(shape: list[int], tile: tuple[int, int, int], overlap: float) -> list[int]:
    """The nearest shape whose tiles sit at the same places under MONAI's and nnU-Net's rules."""
    aligned = []
    for size, t in zip(shape, tile):
        interval = int(t * (1.0 - overlap))
        if t * (1.0 - overlap) != interval:
            raise ValueError(f"tile {t} x (1 - overlap {overlap}) must be an integer for the exact check")
        aligned.append(t + max(0, round((size - t) / interval)) * interval)
    return aligned


def child_agree(spec: dict[str, Any]) -> dict[str, Any]:
    """Exact check: aligned tile grid and our Gaussian as MONAI's ``roi_weight_map``; and the two Gaussians."""
    from monai.data.utils import compute_importance_map

    from unisyn_v2.models.sliding_window import gaussian_importance_map

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    predictor, tile, _ = build_network(spec["network"], spec["preset"], device)
    shape = aligned_shape(spec["shape"], tile, spec["overlap"])
    image = torch.rand((1, *shape), generator=torch.Generator().manual_seed(2))
    ours_map = gaussian_importance_map(tile, device=device)
    ours = run_method("ours", image, predictor, tile, spec["overlap"], spec["tile_batch"], device)
    monai = run_method("monai", image, predictor, tile, spec["overlap"], spec["tile_batch"], device, weight_map=ours_map)
    monai_map = compute_importance_map(tile, mode="gaussian", sigma_scale=0.125, device="cpu")
    return {"aligned_shape": shape, "max_abs_diff_same_weights": float((ours - monai).abs().max()),
            "output_abs_max": float(ours.abs().max()),
            "gaussian_maps_max_abs_diff": float((ours_map.cpu() - monai_map.float()).abs().max()),
            "gaussian_min_ours": float(ours_map.min()), "gaussian_min_monai": float(monai_map.min())}


# ------------------------------------------------------------------------------------------ parent
def parse_case(text: str) -> tuple[str, list[int]]:
    """``unet@96x112x96`` -> ("unet", [96, 112, 96])."""
    network, _, shape = text.partition("@")
    if network not in NETWORKS or not shape:
        raise argparse.ArgumentTypeError(f"case {text!r} must read NETWORK@ZxYxX with NETWORK in {NETWORKS}")
    sizes = [int(v) for v in shape.lower().split("x")]
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"case {text!r}: the shape needs three sizes ZxYxX")
    return network, sizes


def summarise(runs: list[dict[str, Any]], cases: list[str], device: str) -> list[dict[str, Any]]:
    """Median time and peak memory per case and method, and MONAI / ours ratios."""
    memory_key = "cuda_peak_increase_mib" if device.startswith("cuda") else "peak_rss_increase_mib"
    rows = []
    for case in cases:
        row: dict[str, Any] = {"case": case}
        for method in ("ours", "monai"):
            good = [r for r in runs if r["case"] == case and r["method"] == method and r["returncode"] == 0]
            row[f"{method}_runs"] = len(good)
            row[f"{method}_median_s"] = round(median([r["time_s"] for r in good]), 3)
            row[f"{method}_min_s"] = round(min((r["time_s"] for r in good), default=float("nan")), 3)
            row[f"{method}_peak_mib"] = round(median([r[memory_key] for r in good]), 1)
            row[f"{method}_process_max_rss_mib"] = round(median([r["process_max_rss_mib"] for r in good]), 1)
        row["time_ratio_monai_over_ours"] = round(row["monai_median_s"] / row["ours_median_s"], 3)
        row["memory_ratio_monai_over_ours"] = round(row["monai_peak_mib"] / max(row["ours_peak_mib"], 1e-9), 3)
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The report."""
    memory = "CUDA peak allocated above the start" if result["device"].startswith("cuda") else "peak RSS above the RSS at the call"
    lines = [machine_line(result["machine"]), "",
             f"Preset `{result['preset']}` networks, overlap {result['overlap']}, tile batch {result['tile_batch']}, "
             f"{result['repeats']} alternating runs per method, device {result['device']}, MONAI {result['monai_version']}, "
             f"torch threads in the children {result.get('threads') or 'default'}.", ""]
    header = ["network @ volume (z y x)", "tile", "ours median s", "MONAI median s", "MONAI / ours time",
              f"ours {memory} (MiB)", "MONAI (MiB)", "max abs diff (defaults)", "max abs diff (same weights, aligned grid)"]
    rows = []
    for row in result["summary"]:
        agree = result["agreement"].get(row["case"], {})
        rows.append([row["case"], "x".join(map(str, agree.get("tile", []))), row["ours_median_s"], row["monai_median_s"],
                     row["time_ratio_monai_over_ours"], row["ours_peak_mib"], row["monai_peak_mib"],
                     f"{agree.get('max_abs_diff_defaults', float('nan')):.2e} (mean {agree.get('mean_abs_diff_defaults', float('nan')):.1e}, "
                     f"p99 {agree.get('p99_abs_diff_defaults', float('nan')):.1e}, "
                     f"output max {agree.get('output_abs_max', float('nan')):.2f})",
                     f"{agree.get('max_abs_diff_same_weights', float('nan')):.1e} on {agree.get('aligned_shape')}"])
    lines += md_table(header, rows)
    lines += ["", "Runs (s, per method, in order):"]
    for case in result["cases"]:
        for method in ("ours", "monai"):
            times = [str(r["time_s"]) if r["returncode"] == 0 else "fail" for r in result["runs"]
                     if r["case"] == case and r["method"] == method]
            lines.append(f"- {case} {method}: {', '.join(times)}")
    lines += command_and_notes(result)
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"CPU-sized run: cases {' '.join(QUICK_CASES)}, 3 repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--cases", nargs="+", default=None, metavar="NETWORK@ZxYxX",
                        help=f"network (pointwise, unet, gfm) and volume; default {' '.join(FULL_CASES)} ({' '.join(QUICK_CASES)} with --quick)")
    parser.add_argument("--preset", default=None, help="preset whose 3D network and patch are used (default: cpu with --quick, else small)")
    parser.add_argument("--overlap", type=float, default=0.5, help="MONAI overlap; ours gets step_size = 1 - overlap (default 0.5)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass, both methods (default 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method and case (default 3 quick, 5 full)")
    parser.add_argument("--monai-python", type=Path, default=DEFAULT_MONAI_PYTHON, help=f"python of a venv with monai (default {DEFAULT_MONAI_PYTHON})")
    add_child_process_arguments(parser, "unisyn_sliding_window_vs_monai", timeout_s=1800)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_run_child(build_parser(), argv, lambda spec: child_agree(spec) if spec["mode"] == "agree" else child_time(spec))
    if args is None:
        return 0
    if not args.monai_python.is_file():
        logger.error("no python at %s; create the MONAI venv first (see --help)", args.monai_python)
        return 2
    cases = [parse_case(c) for c in (args.cases or (QUICK_CASES if args.quick else FULL_CASES))]
    preset = args.preset or ("cpu" if args.quick else "small")
    repeats = args.repeats or (3 if args.quick else 5)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="unisyn_bench_sw_"))
    env = child_env(REPO)
    machine = machine_info(args.device)
    version = subprocess.run([str(args.monai_python), "-c", "import monai; print(monai.__version__)"],
                             capture_output=True, text=True, env=env).stdout.strip()
    runs: list[dict[str, Any]] = []
    agreement: dict[str, dict[str, Any]] = {}
    notes = ["Each run is a fresh child process; times cover one whole call (host -> device -> host)."]
    try:
        for network, shape in cases:
            case = f"{network}@{'x'.join(map(str, shape))}"
            base = {"network": network, "shape": shape, "preset": preset, "device": args.device, "overlap": args.overlap,
                    "tile_batch": args.tile_batch, "threads": args.threads}
            saved: dict[str, Path] = {}
            for repeat in range(repeats):
                for method in (("ours", "monai") if repeat % 2 == 0 else ("monai", "ours")):
                    tag = f"{network}_{method}_{repeat}"
                    spec = {**base, "mode": "time", "method": method, "result": str(work / f"{tag}.json")}
                    if repeat == 0:
                        spec["save"] = saved[method] = work / f"{network}_{method}.npy"
                    record = run_child([str(args.monai_python), __file__, "--child", json.dumps(spec, default=str)],
                                       work / f"{tag}.json", args.out / f"{tag}.log", env, args.timeout)
                    runs.append({"case": case, "method": method, "repeat": repeat, **record})
                    logger.info("%s %-5s run %d: %s s, peak +%s MiB (load %.1f)", case, method, repeat + 1,
                                record.get("time_s", "fail"), record.get("peak_rss_increase_mib", record.get("cuda_peak_increase_mib")),
                                os.getloadavg()[0])
            agree = run_child([str(args.monai_python), __file__, "--child",
                               json.dumps({**base, "mode": "agree", "result": str(work / f"{network}_agree.json")})],
                              work / f"{network}_agree.json", args.out / f"{network}_agree.log", env, args.timeout)
            if all(p.is_file() for p in saved.values()) and len(saved) == 2:
                ours, monai = np.load(saved["ours"]), np.load(saved["monai"])
                diff = np.abs(ours - monai)
                agree.update(max_abs_diff_defaults=float(diff.max()), mean_abs_diff_defaults=float(diff.mean()),
                             p99_abs_diff_defaults=float(np.percentile(diff, 99)), output_abs_max=float(np.abs(ours).max()))
            agree["tile"] = next((r["tile"] for r in runs if r["case"] == case and "tile" in r), [])
            agreement[case] = agree
            logger.info("%s agreement: %s", case, {k: v for k, v in agree.items() if "diff" in k})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = [f"{n}@{'x'.join(map(str, s))}" for n, s in cases]
    machine["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result = {"machine": machine, "command": command_line("sliding_window_vs_monai.py", argv), "device": args.device,
              "preset": preset, "overlap": args.overlap, "tile_batch": args.tile_batch, "repeats": repeats, "threads": args.threads,
              "monai_version": version, "cases": names, "runs": runs, "agreement": agreement,
              "summary": summarise(runs, names, args.device), "notes": notes}
    write_outputs(args.out, result, markdown(result))
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
