"""One prepared GPU check (issue 21, item 4): planner vs measured memory, paper-GFM speed, prediction, MONAI.

Sections, in order, each within its share of a total time guard (default 450 s, so one H100 run
leaves room for a rerun inside a 15-minute lease):

(a) **planner vs measured memory**: for each preset and ``--budgets`` (GiB, default 16 40 80), the
    planner's 2.5d/3d patch and batch (``plan_experiment`` on a 1 mm 182x218x182 fingerprint, fp16 on
    CUDA) against ``torch.cuda.max_memory_allocated`` of real training steps of the GFM and the
    cross-attention baseline at that patch and batch (two forward passes per step as the cyclic trainers
    do, autocast fp16 with a grad scaler, Adam). Target: 70-100 % of the budget, never above. Also which
    preset ``auto`` picks at each budget.
(b) **paper-size GFM training iterations/s** (batch 8, 8x64x64 slabs, fp16 autocast).
(c) **paper-size GFM prediction of one 182x218x182 brain** through the API
    (``UniSynPredictor.predict_normalized``: the sliding window with Gaussian blending, step 0.5) against
    the bare forward time of its tiles (each network call timed), at fp32, fp16, bf16, bf16 with
    channels-last and bf16 with ``torch.compile``. Target <= 10 s end to end.
(d) **the sliding window against MONAI's** ``sliding_window_inference`` (Gaussian, overlap 0.5) with a
    cheap 3D network on the same volume, when monai imports.

``--device cpu --tiny`` runs every section with the cpu preset, small volumes and a tiny budget in a few
seconds (tests/test_gpu_check.py), so that the one GPU run is prepared::

    .venv/bin/python benchmarks/gpu_check.py --device cuda --out /tmp/gpu_check      # on the GPU
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check_tiny

Writes ``result.json`` and ``result.md`` (card, date, torch version and every number) to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from unisyn_v2.experiment_planning.planner import choose_preset, plan_experiment
from unisyn_v2.networks.factory import build_synthesis_network
from unisyn_v2.networks.outputs import SynthesisOutput

logger = logging.getLogger("benchmarks.gpu_check")
GIB = 1024**3
BRAIN_ZYX = (182, 218, 182)
CROP_ZYX = (150, 180, 150)  # a brain-mask crop of that head (the fingerprint's shape after cropping)
TINY_CROP_ZYX = (8, 16, 16)


@dataclass
class Clock:
    """The total time guard and the per-section shares of it."""

    total_s: float
    started: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.started)

    def allows(self, what: str, section_deadline: float, need_s: float = 0.0) -> bool:
        """True while the section and the total have time left (``need_s``: what the next item needs)."""
        if time.perf_counter() + need_s >= section_deadline or self.left() <= need_s:
            self.skipped.append(what)
            return False
        return True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fingerprint(shape_zyx: tuple[int, int, int]) -> dict[str, Any]:
    """A 1 mm dataset fingerprint of two cases of ``shape_zyx`` after the brain crop (T1w and CT)."""
    case = {"spacing_zyx": [1.0, 1.0, 1.0], "shape_after_crop_zyx": list(shape_zyx)}
    ct = {"foreground_intensities": {"percentile_00_5": -10.0, "percentile_99_5": 90.0}, "typical_metadata": {}}
    return {"dataset_name": "Dataset998_GPUCheck", "cases": {"a": case, "b": case},
            "modalities": {"T1w": {"foreground_intensities": {}, "typical_metadata": {}}, "CT": ct}}


_PLANS: dict[tuple[Any, ...], Any] = {}


def plans_for(preset: str, shape: tuple[int, int, int], budget: float | None, configurations: tuple[str, ...],
              precision: str | None = None) -> Any:
    """The planner's plans for the 1 mm fingerprint (cached: sections (b) and (c) reuse (a)'s)."""
    key = (preset, shape, budget, configurations, precision)
    if key not in _PLANS:
        _PLANS[key] = plan_experiment(fingerprint(shape), preset, budget, configurations=configurations, precision=precision)
    return _PLANS[key]


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_steps(kind: str, kwargs: dict[str, Any], patch: tuple[int, ...], slab: bool, batch: int,
                   device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """Peak allocated memory and it/s of ``steps`` cyclic training steps (two forward passes each)."""
    free_memory(device)
    torch.manual_seed(0)
    network = build_synthesis_network(kind, kwargs).to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    shape = (batch, patch[0], patch[1], patch[2]) if slab else (batch, 1, *patch)
    text_dim = int(kwargs["text_dim"])
    source, target = torch.rand(shape, device=device), torch.rand(shape, device=device)
    source_text, target_text = torch.randn(batch, text_dim, device=device), torch.randn(batch, text_dim, device=device)
    timings = []
    for step in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            forward = network(source, source_text, target_text).synthesis
            backward = network(target, target_text, source_text).synthesis
            loss = (forward.float() - target).abs().mean() + (backward.float() - source).abs().mean()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        synchronize(device)
        if step >= warmup:
            timings.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    params = sum(p.numel() for p in network.parameters())
    del network, optimizer, source, target, source_text, target_text, loss
    free_memory(device)
    return {"peak_allocated_gib": None if peak is None else round(peak, 3), "params_m": round(params / 1e6, 2),
            "s_per_step": round(float(np.median(timings)), 4), "it_per_s": round(1.0 / float(np.median(timings)), 3)}


def section_memory(args: argparse.Namespace, device: torch.device, clock: Clock, deadline: float) -> dict[str, Any]:
    """(a): each preset's plans at each budget against real training steps."""
    precision = "fp16" if device.type == "cuda" else "fp32"
    shape = TINY_CROP_ZYX if args.tiny else CROP_ZYX
    out: dict[str, Any] = {"precision": precision, "auto": {}, "rows": []}
    for budget in ([] if args.tiny else args.budgets):  # (tests/test_planning.py checks auto's choice on CPU)
        out["auto"][str(budget)] = choose_preset("auto", budget, shape, precision).name
    seen: set[tuple[Any, ...]] = set()
    for preset in args.presets:
        for budget in args.budgets:
            plans = plans_for(preset, shape, budget, tuple(args.configurations), precision)
            for config in plans.configurations.values():
                key = (preset, config.name, tuple(config.patch_size), config.batch_size)
                if key in seen:  # the paper's fixed 2.5d plan is the same at every budget
                    continue
                seen.add(key)
                for kind in args.kinds:
                    what = f"(a) {preset} {budget} GiB {config.name} {kind}"
                    if not clock.allows(what, deadline):
                        continue
                    row = {"preset": preset, "budget_gib": budget, "configuration": config.name,
                           "patch": list(config.patch_size), "batch": config.batch_size, "kind": kind,
                           "estimated_gib": config.estimated_memory_gb, "memory_precision": config.memory_precision}
                    try:
                        row.update(training_steps(kind, config.network_kwargs, config.patch_size, config.is_slab,
                                                  config.batch_size, device, args.steps, args.warmup))
                    except torch.cuda.OutOfMemoryError as error:
                        row["error"] = f"out of memory: {str(error).splitlines()[0]}"
                        free_memory(device)
                    peak = row.get("peak_allocated_gib")
                    if peak is not None:
                        row["peak_over_budget"] = round(peak / budget, 3)
                        row["peak_over_estimate"] = round(peak / max(config.estimated_memory_gb, 1e-9), 3)
                    out["rows"].append(row)
                    logger.info("%s: %s", what, {k: row.get(k) for k in ("patch", "batch", "peak_allocated_gib", "it_per_s", "error")})
    return out


def section_training_speed(args: argparse.Namespace, device: torch.device, clock: Clock, deadline: float) -> dict[str, Any]:
    """(b): iterations/s of the paper GFM (the cpu preset's with --tiny)."""
    preset = "cpu" if args.tiny else "paper"
    shape = TINY_CROP_ZYX if args.tiny else CROP_ZYX
    plans = plans_for(preset, shape, None if args.tiny else 80.0, ("2.5d",))
    config = plans.configuration("2.5d")
    if not clock.allows(f"(b) {preset} GFM training speed", deadline):
        return {}
    result = training_steps("gfm", config.network_kwargs, config.patch_size, True, config.batch_size, device,
                            max(args.steps, 3 if args.tiny else 10), args.warmup)
    return {"preset": preset, "patch": list(config.patch_size), "batch": config.batch_size, **result}


class Variant(nn.Module):
    """A 2D synthesis network under autocast and/or channels-last whose calls are timed (synchronised).

    ``dry``: return zeros of the output's shape without calling the network, which counts the calls and
    times the predictor's own work (padding, tiling, Gaussian blending) with a free network.
    """

    def __init__(self, network: nn.Module, device: torch.device, dtype: torch.dtype | None, channels_last: bool,
                 out_channels: int) -> None:
        super().__init__()
        self.network, self.device, self.dtype, self.channels_last = network, device, dtype, channels_last
        self.out_channels, self.dry = out_channels, False
        self.calls, self.forward_s = 0, 0.0

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        self.calls += 1
        if self.dry:
            return SynthesisOutput(synthesis=torch.zeros(source.shape[0], self.out_channels, *source.shape[2:],
                                                         device=source.device), anatomy=None)
        synchronize(self.device)
        started = time.perf_counter()
        if self.channels_last:
            source = source.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self.network(source, source_text, target_text)
        synthesis = out.synthesis.float().contiguous()
        synchronize(self.device)
        self.forward_s += time.perf_counter() - started
        return SynthesisOutput(synthesis=synthesis, anatomy=None)


class RandomConditioner:
    """Stands in for NeuroCLIP: a fixed random embedding per call (speed does not depend on the prompt)."""

    def __init__(self, text_dim: int) -> None:
        self.embedding = torch.randn(1, text_dim, generator=torch.Generator().manual_seed(0))

    def embed(self, descriptions: list[Any]) -> torch.Tensor:
        return self.embedding.expand(len(descriptions), -1)


def section_prediction(args: argparse.Namespace, device: torch.device, clock: Clock, deadline: float) -> dict[str, Any]:
    """(c): one whole brain through UniSynPredictor.predict_normalized, per precision/format variant.

    A dry pass (zeros instead of the network) counts the network calls and times the predictor's own
    work; each variant then times 3 calls and is run in full only if the projection (calls x time per
    call + that overhead) fits the section's time left, else it records the projection.
    """
    from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor

    preset = "cpu" if args.tiny else "paper"
    volume = (12, 40, 36) if args.tiny else BRAIN_ZYX
    plans = plans_for(preset, TINY_CROP_ZYX if args.tiny else CROP_ZYX, None if args.tiny else 80.0, ("2.5d",))
    config = plans.configuration("2.5d")
    kwargs = config.network_kwargs
    torch.manual_seed(0)
    network = build_synthesis_network("gfm", kwargs).to(device).eval()
    image = np.random.default_rng(0).random((1, *volume), dtype=np.float32)
    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    variants: list[tuple[str, torch.dtype | None, bool, bool]] = [  # cheapest first; compile needs minutes to build
        ("bf16", torch.bfloat16, False, False), ("bf16 + channels-last", torch.bfloat16, True, False),
        ("fp16" if device.type == "cuda" else "bf16 (cpu half)", half, False, False), ("fp32", None, False, False),
        ("bf16 + torch.compile", torch.bfloat16, False, True)]
    if device.type == "cpu":
        variants = [v for v in variants if v[0] not in ("bf16", "bf16 + channels-last")] + \
            [("bf16 + channels-last", torch.bfloat16, True, False)]  # bf16 is the cpu half above
        variants = [variants[1], variants[0], *variants[2:]]  # fp32 first on the CPU (tests read this order)
    if args.no_compile:
        variants = [v for v in variants if not v[3]]
    z_step = None if args.slab_z_step == 0 else args.slab_z_step
    settings = PredictionSettings(step_size=0.5, tile_batch_size=args.tile_batch, progress=False, slab_z_step=z_step)
    text_dim = int(kwargs["text_dim"])
    dry = Variant(network, device, None, False, int(kwargs["out_channels"]))
    dry.dry = True
    predictor = UniSynPredictor([dry], RandomConditioner(text_dim), plans, "2.5d", device=device, settings=settings)
    with torch.inference_mode():
        synchronize(device)
        started = time.perf_counter()
        predictor.predict_normalized(image, None, None)
        synchronize(device)
    overhead_s, calls = time.perf_counter() - started, dry.calls
    rows = []
    for name, dtype, channels_last, compiled in variants:
        if not clock.allows(f"(c) prediction {name}", deadline, 120.0 if compiled and not args.tiny else 0.0):
            continue
        inner: nn.Module = network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if compiled:
            inner = torch.compile(inner)
        variant = Variant(inner, device, dtype, channels_last, int(kwargs["out_channels"]))
        predictor = UniSynPredictor([variant], RandomConditioner(text_dim), plans, "2.5d", device=device, settings=settings)
        row: dict[str, Any] = {"variant": name}
        try:
            probe = torch.rand(args.tile_batch, int(kwargs["in_channels"]), *config.patch_size[1:], device=device)
            texts = torch.randn(args.tile_batch, text_dim, device=device)
            with torch.inference_mode():
                started = time.perf_counter()
                variant(probe, texts, texts)  # warm-up (compilation, cuDNN autotuning)
                row["first_call_s"] = round(time.perf_counter() - started, 3)
                variant.calls, variant.forward_s = 0, 0.0
                for _ in range(3):
                    variant(probe, texts, texts)
            per_call = variant.forward_s / 3
            row["projected_s"] = round(calls * per_call + overhead_s, 2)
            if time.perf_counter() + 1.5 * row["projected_s"] > deadline or 1.5 * row["projected_s"] > clock.left():
                row["skipped"] = "projection exceeds the time left"
                clock.skipped.append(f"(c) prediction {name} (projected {row['projected_s']} s)")
            else:
                variant.calls, variant.forward_s = 0, 0.0
                with torch.inference_mode():
                    synchronize(device)
                    started = time.perf_counter()
                    prediction = predictor.predict_normalized(image, None, None)
                    synchronize(device)
                row.update(api_s=round(time.perf_counter() - started, 3), forward_s=round(variant.forward_s, 3),
                           network_calls=variant.calls, tiles=variant.calls * args.tile_batch,
                           finite=bool(np.isfinite(prediction).all()), shape=list(prediction.shape))
                row["overhead_s"] = round(row["api_s"] - row["forward_s"], 3)
        except Exception as error:  # noqa: BLE001 - a variant that fails is a finding, not the end of the check
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        rows.append(row)
        logger.info("(c) %s: %s", name, row)
        del predictor, variant
        free_memory(device)
    return {"preset": preset, "volume_zyx": list(volume), "patch": list(config.patch_size), "step_size": 0.5,
            "slab_z_step": z_step, "tile_batch": args.tile_batch, "network_calls": calls,
            "dry_run_overhead_s": round(overhead_s, 3),
            "params_m": round(sum(p.numel() for p in network.parameters()) / 1e6, 1), "rows": rows}


def section_monai(args: argparse.Namespace, device: torch.device, clock: Clock, deadline: float) -> dict[str, Any]:
    """(d): our sliding window against MONAI's on a cheap 3D network (the blending's cost, not the network's)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return {"skipped": "monai is not importable in this venv"}
    from unisyn_v2.models.sliding_window import sliding_window_predict

    volume = (24, 40, 36) if args.tiny else BRAIN_ZYX
    tile = (16, 16, 16) if args.tiny else (64, 64, 64)
    network = nn.Conv3d(1, 1, 3, padding=1).to(device).eval()
    image = torch.rand((1, *volume))
    rows = {}
    for name in ("unisyn", "monai"):
        times = []
        for _ in range(3):
            if not clock.allows(f"(d) {name}", deadline):
                break
            synchronize(device)
            started = time.perf_counter()
            with torch.inference_mode():
                if name == "unisyn":
                    sliding_window_predict(image, network, tile, step_size=0.5, tile_batch_size=args.tile_batch,
                                           out_channels=1, device=device)
                else:
                    sliding_window_inference(image[None].to(device), tile, args.tile_batch, network, overlap=0.5,
                                             mode="gaussian").cpu()
            synchronize(device)
            times.append(time.perf_counter() - started)
        rows[name] = {"median_s": round(float(np.median(times)), 4) if times else None, "runs_s": [round(t, 4) for t in times]}
    return {"volume_zyx": list(volume), "tile": list(tile), "rows": rows}


def device_facts(device: torch.device) -> dict[str, Any]:
    facts = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
             "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(card=props.name, memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version())
    else:
        facts["card"] = platform.processor() or "cpu"
    return facts


def markdown(result: dict[str, Any]) -> str:
    f = result["device"]
    lines = [f"Device: {f.get('card')} ({f.get('memory_gib', '-')} GiB), torch {f['torch']}, {f['date_utc']}; "
             f"{'--tiny ' if result['tiny'] else ''}total {result['total_s']} s of a {result['time_guard_s']} s guard.", ""]
    mem = result["memory"]
    lines += [f"(a) planner vs measured ({mem.get('precision')}); auto picks: "
              + ", ".join(f"{b} GiB -> {p}" for b, p in mem.get("auto", {}).items()), "",
              "| preset | budget (GiB) | config | kind | patch | batch | estimate (GiB) | peak allocated (GiB) | peak / budget | peak / estimate | it/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in mem.get("rows", []):
        lines.append(f"| {r['preset']} | {r['budget_gib']} | {r['configuration']} | {r['kind']} | {'x'.join(map(str, r['patch']))} | "
                     f"{r['batch']} | {r['estimated_gib']} | {r.get('peak_allocated_gib', r.get('error'))} | "
                     f"{r.get('peak_over_budget', '')} | {r.get('peak_over_estimate', '')} | {r.get('it_per_s', '')} |")
    speed = result["training_speed"]
    if speed:
        lines += ["", f"(b) {speed['preset']} GFM training: {speed['it_per_s']} it/s ({speed['s_per_step']} s/step), "
                      f"batch {speed['batch']}, patch {'x'.join(map(str, speed['patch']))}, {speed['params_m']} M parameters."]
    pred = result["prediction"]
    if "preset" not in pred:
        pred = {"preset": "-", "params_m": "-", "volume_zyx": [], "step_size": "-", "tile_batch": "-", "rows": []}
    lines += ["", f"(c) {pred['preset']} GFM ({pred['params_m']} M) prediction of one {'x'.join(map(str, pred['volume_zyx']))} "
                  f"volume, step {pred['step_size']}, tile batch {pred['tile_batch']}, through UniSynPredictor.predict_normalized:", "",
              f"{pred.get('network_calls')} network calls (slabs every {pred.get('slab_z_step') or 'half patch'} slice(s)); "
              f"the predictor's own work with a free network (dry run): {pred.get('dry_run_overhead_s')} s.", "",
              "| variant | first call (s) | projected (s) | API (s) | network calls timed (s) | overhead (s) | tiles | finite |",
              "|---|---|---|---|---|---|---|---|"]
    for r in pred["rows"]:
        lines.append(f"| {r['variant']} | {r.get('first_call_s', '')} | {r.get('projected_s', '')} | "
                     f"{r.get('api_s', r.get('error', r.get('skipped')))} | {r.get('forward_s', '')} | {r.get('overhead_s', '')} | "
                     f"{r.get('tiles', '')} | {r.get('finite', '')} |")
    monai = result["monai"]
    if "rows" in monai:
        lines += ["", f"(d) sliding window, cheap 3D network, {'x'.join(map(str, monai['volume_zyx']))}, tile "
                      f"{'x'.join(map(str, monai['tile']))}: ours {monai['rows']['unisyn']['median_s']} s, MONAI "
                      f"{monai['rows']['monai']['median_s']} s (median of up to 3)."]
    else:
        lines += ["", f"(d) {monai.get('skipped')}."]
    if result["skipped"]:
        lines += ["", "Skipped by the time guard: " + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="cpu preset, small volumes, tiny budget: the CI check of this script")
    parser.add_argument("--out", type=Path, required=True, help="folder for result.json and result.md")
    parser.add_argument("--time-guard", type=float, default=None, help="total seconds (default 450; --tiny 120)")
    parser.add_argument("--budgets", type=float, nargs="+", default=None, help="GiB (default 16 40 80; --tiny 1)")
    parser.add_argument("--presets", nargs="+", default=None, help="default paper large medium small (in this order, as time allows); --tiny cpu")
    parser.add_argument("--configurations", nargs="+", default=["2.5d", "3d"], choices=["2.5d", "3d"])
    parser.add_argument("--kinds", nargs="+", default=["gfm", "crossattn"], choices=["gfm", "crossattn"])
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per row (default 3; --tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; --tiny 0)")
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass (default 4, unisyn_predict's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--slab-z-step", type=int, default=1,
                        help="(c) 2.5D slabs every N slices (default 1, the predictor's default; 0: step 0.5 along z too)")
    parser.add_argument("--warmup-prediction", action="store_true", help="a small warm-up prediction before each variant")
    parser.add_argument("--sections", nargs="+", default=["memory", "training", "prediction", "monai"],
                        choices=["memory", "training", "prediction", "monai"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu --tiny to check the script)", file=sys.stderr)
        return 2
    args.budgets = args.budgets or ([1.0] if args.tiny else [16.0, 40.0, 80.0])
    args.presets = args.presets or (["cpu"] if args.tiny else ["paper", "large", "medium", "small"])  # most telling first
    args.steps = args.steps or (1 if args.tiny else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 1)
    args.no_compile = args.no_compile or (args.tiny and device.type == "cpu")  # compiling needs a C++ toolchain and minutes
    guard = args.time_guard if args.time_guard is not None else (120.0 if args.tiny else 450.0)
    clock = Clock(guard)
    shares = {"memory": 0.40, "training": 0.08, "prediction": 0.42, "monai": 0.10}
    sections: dict[str, Callable[..., dict[str, Any]]] = {"memory": section_memory, "training": section_training_speed,
                                                          "prediction": section_prediction, "monai": section_monai}
    results: dict[str, Any] = {}
    budget_end = clock.started
    for name, function in sections.items():
        budget_end += shares[name] * guard
        if name not in args.sections:
            results[name] = {"skipped": "not asked for"} if name == "monai" else ({} if name == "training" else {"rows": []})
            continue
        results[name] = function(args, device, clock, max(budget_end, time.perf_counter()))
    result = {"device": device_facts(device), "tiny": args.tiny, "time_guard_s": guard,
              "total_s": round(time.perf_counter() - clock.started, 1), "command": " ".join(["gpu_check.py", *(argv or sys.argv[1:])]),
              "memory": results["memory"], "training_speed": results["training"], "prediction": results["prediction"],
              "monai": results["monai"], "skipped": clock.skipped}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    text = markdown(result)
    (args.out / "result.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
