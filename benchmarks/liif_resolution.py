"""Thick-slice source -> fine target (issue 20): the implicit (LIIF) decoder against up-sampling before or after synthesis.

Phantom (``unisyn_v2.phantom``, T1w and T2w of every case, default 64^3 at 3.2 mm): the held-out cases' T1w is
acquired with slices ``--factor`` times thicker along z (Gaussian slice profile, FWHM = thickness,
:mod:`unisyn_v2.phantom.slice_profile`); the target is their T2w on the phantom's own grid. Two networks of one
architecture (3D GFM encoder/affine, one task, fixed two-class prompt codes, no text encoder) are trained for the
same wall-clock budget from the training cases: ``conv`` (pointwise decoder, fine source -> fine target, the
pipeline's usual training) and ``liif`` (implicit decoder, TUMSyn's training: z down-sampling drawn in [1,
factor], random fine target points; :mod:`unisyn_v2.training.liif_training`). Methods scored in the brain
(PSNR on the contract scale as predicted, :func:`contract_psnr`, the figure to read; and, as before, PSNR/SSIM
after each image's brain scaling, ``benchmarks.common.score``, and PSNR after percentile scaling, ``robust_psnr``):

- ``liif``: the LIIF network encodes the thick source, queried at every fine voxel (``inference.output_grid``);
- ``before_trilinear`` / ``before_bspline``: thick source up-sampled to the fine grid, then the conv network;
- ``after_trilinear`` / ``after_bspline``: the conv network on the thick grid, its output up-sampled;

Also the real ICBM152 T1w -> T2w templates (``../shared/data/real_mni2mm``, resampled to the phantom's spacing
and acquired through the same profile). ``--memory`` measures, each in a child process, the peak RSS of a 1 mm
182 x 218 x 182 output: LIIF from a 1 x 1 x 4 mm source against the conv decoder on the 1 mm source
(untrained networks of the same size, step 1.0 to keep CPU time down; memory does not depend on the step).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/liif_resolution.py --out /tmp/bench_liif [--memory]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import zoom

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_info, md_table, peak_rss_mib, setup_logging  # noqa: E402
from common import score  # noqa: E402
from unisyn_v2.dataset.image_io import read_image  # noqa: E402
from unisyn_v2.evaluation.metrics import psnr  # noqa: E402
from unisyn_v2.inference.output_grid import liif_tiled_prediction  # noqa: E402
from unisyn_v2.models.sliding_window import sliding_window_predict  # noqa: E402
from unisyn_v2.networks.factory import build_synthesis_network  # noqa: E402
from unisyn_v2.networks.liif import LIIFDecoder, liif_decoder_of  # noqa: E402
from unisyn_v2.phantom.generator import generate_phantom_dataset  # noqa: E402
from unisyn_v2.phantom.slice_profile import render_thick_slices  # noqa: E402
from unisyn_v2.training.liif_training import degrade, draw_factors, gather_points, sample_points  # noqa: E402
from unisyn_v2.training.losses import weighted_l1  # noqa: E402

logger = logging.getLogger("benchmarks.liif_resolution")
REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_mni2mm"
TEXT = {"T1w": torch.tensor([[1.0, 0.0]]), "T2w": torch.tensor([[0.0, 1.0]])}


#: LIIF variants trained side by side with the same budget (``--variants``): LIIFDecoder options over the original
#: (local ensemble of 8 voxels, 4096 random fine points per item, factor uniform in [1, factor]).
VARIANTS: dict[str, dict[str, Any]] = {
    "liif": {},
    "liif_dense_near4": {"queries": 0, "max_share": 0.5},
    "liif_interp_dense": {"interpolate_features": True, "queries": 0, "max_share": 0.5},
    "liif_interp_dense_res": {"interpolate_features": True, "queries": 0, "max_share": 0.5, "residual": True},
    "liif_interp_res": {"interpolate_features": True, "residual": True},
    "liif_res_dense_near4": {"queries": 0, "max_share": 0.5, "residual": True},
    "liif_interp_dense_res_unfold": {"interpolate_features": True, "queries": 0, "max_share": 0.5, "residual": True,
                                     "unfold": (1, 0, 0)},
}


def network_kwargs(decoder: str, factor: float) -> dict[str, Any]:
    """The shared architecture (CPU-sized 3D GFM); only the decoder differs."""
    kwargs = {"dims": 3, "in_channels": 1, "out_channels": 1, "encoder_width": 24, "num_blocks": 3,
              "encoder_dilations": [1, 2, 4], "encoder_input_skip": True, "feature_dim": 32,
              "decoder_hidden": [64, 64], "text_dim": 2, "decoder": decoder}
    if decoder == "liif":
        kwargs.update(liif_max_scale=[factor, 1.0, 1.0], liif_queries=4096)
    return kwargs


def normalise(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The MRI contract: brain p0.5 -> 0, p99.5 -> 1."""
    lo, hi = np.percentile(image[mask], [0.5, 99.5])
    return ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def load_cases(root: Path) -> list[dict[str, Any]]:
    description = json.loads((root / "dataset.json").read_text())
    cases = []
    for case in description["cases"]:
        mask = read_image(root / case["brain_mask"])[0] > 0
        images = {i["modality"]: read_image(root / i["file"]) for i in case["images"]}
        cases.append({"id": case["id"], "mask": mask, "T1w": normalise(images["T1w"][0], mask),
                      "T2w": normalise(images["T2w"][0], mask), "spacing_zyx": images["T1w"][1].spacing_zyx})
    return cases


def random_patches(cases: list[dict[str, Any]], patch: tuple[int, int, int], batch: int,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sources, targets, weights = [], [], []
    for _ in range(batch):
        case = cases[int(rng.integers(len(cases)))]
        starts = [int(rng.integers(0, n - p + 1)) for n, p in zip(case["mask"].shape, patch)]
        box = tuple(slice(s, s + p) for s, p in zip(starts, patch))
        sources.append(case["T1w"][box]); targets.append(case["T2w"][box])
        weights.append(np.where(case["mask"][box], 1.0, 0.01).astype(np.float32))
    as_tensor = lambda arrays: torch.from_numpy(np.stack(arrays)[:, None])  # noqa: E731
    return as_tensor(sources), as_tensor(targets), as_tensor(weights)


def build(name: str, factor: float, seed: int = 0) -> torch.nn.Module:
    """``conv`` or a LIIF variant of :data:`VARIANTS`; the same seed gives every variant the same encoder start."""
    torch.manual_seed(seed)
    network = build_synthesis_network("gfm", network_kwargs("conv" if name == "conv" else "liif", factor))
    if name != "conv":
        original = liif_decoder_of(network)
        assert original is not None
        options = {"max_scale": original.max_scale, "queries": original.queries, "profile": original.profile,
                   **VARIANTS[name]}
        network.decoder = LIIFDecoder(original.feature_dim, (64, 64), 1, **options)
    return network


def train(names: list[str], cases: list[dict[str, Any]], factor: float, seconds: float, patch: tuple[int, int, int],
          seed: int = 0, schedule: str = "poly") -> tuple[dict[str, torch.nn.Module], dict[str, dict[str, Any]]]:
    """Adam 1e-3 for ``seconds`` of each network's own step time on random patches (T1w -> T2w), the networks
    interleaved (the one with the least time so far steps next), so a busy machine slows all of them alike.

    ``schedule`` "poly" decays the learning rate as nnU-Net does, 1e-3 (1 - t / seconds)^0.9 over each network's own
    time t, so the weights scored are where the optimisation settled; "constant" keeps 1e-3 (the first runs: their
    scores moved by 1-2 dB between budgets, the endpoint of a noisy walk)."""
    state = {}
    for name in names:
        network = build(name, factor, seed)
        state[name] = {"network": network, "optimiser": torch.optim.Adam(network.parameters(), lr=1e-3),
                       "rng": np.random.default_rng(seed), "generator": torch.Generator().manual_seed(seed),
                       "liif": liif_decoder_of(network), "elapsed": 0.0, "steps": 0, "losses": []}
    while True:
        name = min((n for n in names if state[n]["elapsed"] < seconds), key=lambda n: state[n]["elapsed"], default=None)
        if name is None:
            break
        s = state[name]
        network, liif, rng = s["network"], s["liif"], s["rng"]
        if schedule == "poly":
            for group in s["optimiser"].param_groups:
                group["lr"] = 1e-3 * max(0.0, 1.0 - s["elapsed"] / seconds) ** 0.9
        started = time.perf_counter()
        source, target, weight = random_patches(cases, patch, 2, rng)
        if liif is None:
            loss = weighted_l1(network(source, TEXT["T1w"].expand(2, -1), TEXT["T2w"].expand(2, -1)).synthesis, target, weight)
        else:
            factors = draw_factors(liif.max_scale, rng, liif.max_share)
            linear, coords = sample_points(patch, 2, liif.queries, s["generator"], source.device)
            cell = torch.tensor([2.0 / n for n in patch]).expand(2, 3)
            features = network.decoder_input(network.encode_anatomy(degrade(source, factors, liif.profile),
                                                                    TEXT["T1w"].expand(2, -1)), TEXT["T2w"].expand(2, -1))
            loss = weighted_l1(liif.query(features, coords, cell, chunk=coords.shape[1]), gather_points(target, linear),
                               gather_points(weight, linear))
        s["optimiser"].zero_grad(); loss.backward(); s["optimiser"].step()
        s["elapsed"] += time.perf_counter() - started
        s["steps"] += 1
        s["losses"].append(float(loss.detach()))
    networks, training = {}, {}
    for name in names:
        s = state[name]
        networks[name] = s["network"].eval()
        training[name] = {"steps": s["steps"], "seconds": round(s["elapsed"], 1),
                          "final_loss": round(float(np.mean(s["losses"][-20:])), 4)}
    return networks, training


def conv_predict(network: torch.nn.Module, volume: np.ndarray, tile: tuple[int, int, int]) -> np.ndarray:
    def forward(patch: torch.Tensor) -> torch.Tensor:
        batch = patch.shape[0]
        return network(patch, TEXT["T1w"].expand(batch, -1), TEXT["T2w"].expand(batch, -1)).synthesis

    tile = tuple(min(t, n) for t, n in zip(tile, volume.shape))
    return sliding_window_predict(torch.from_numpy(volume[None]), forward, tile)[0].numpy()


def upsample(volume: np.ndarray, shape: tuple[int, ...], method: str) -> np.ndarray:
    """Half-voxel convention (the pipeline's): trilinear (align_corners False) or cubic B-spline (grid_mode)."""
    if method == "trilinear":
        return F.interpolate(torch.from_numpy(volume)[None, None], size=shape, mode="trilinear",
                             align_corners=False)[0, 0].numpy()
    return zoom(volume, [n / s for n, s in zip(shape, volume.shape)], order=3, mode="nearest", grid_mode=True,
                output=np.float32)


def evaluate(networks: dict[str, torch.nn.Module], source: np.ndarray, target: np.ndarray, mask: np.ndarray,
             factor: float, tile: tuple[int, int, int]) -> dict[str, dict[str, float]]:
    """Every method on one (fine source, fine target): the thick source is rendered here."""
    thick, _ = render_thick_slices(source, (1.0, 1.0, 1.0), factor, axis=0, profile="gaussian")
    thick_mask, _ = render_thick_slices(mask.astype(np.float32), (1.0, 1.0, 1.0), factor, axis=0, profile="rect")
    thick = normalise(thick, thick_mask >= 0.5)  # the contract on the source as acquired
    shape = target.shape
    results: dict[str, Callable[[], np.ndarray]] = {}
    positions = [(np.arange(n) + 0.5) * (m / n) - 0.5 for n, m in zip(shape, thick.shape)]
    cell = [m / n for n, m in zip(shape, thick.shape)]

    def liif(name: str) -> np.ndarray:
        values, _ = liif_tiled_prediction(thick[None], [networks[name]], TEXT["T1w"], TEXT["T2w"], positions, cell,
                                          tile, 0.5, 0.0)
        return values

    for name in networks:
        if name != "conv":
            results[name] = lambda n=name: liif(n)
    for method in ("trilinear", "bspline"):
        results[f"before_{method}"] = lambda m=method: conv_predict(networks["conv"], upsample(thick, shape, m), tile)
        results[f"after_{method}"] = lambda m=method: upsample(conv_predict(networks["conv"], thick, tile), shape, m)
    scores = {}
    for name, run in results.items():
        started = time.perf_counter()
        prediction = run()
        seconds = time.perf_counter() - started
        scores[name] = {**{k: round(v, 4) for k, v in score(target, prediction, mask, "T2w").items()},
                        "psnr_p05": round(robust_psnr(target, prediction, mask), 4),
                        "psnr_contract": round(contract_psnr(target, prediction, mask), 4), "seconds": round(seconds, 2)}
    return scores


def contract_psnr(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Brain PSNR of the prediction as written, against the target on the MRI contract's scale (data range 1).

    Every network here is trained to output the target's contract scale (brain p0.5 / p99.5 -> 0 / 1), so no
    rescaling is needed: a global intensity error counts against the method, and no single voxel of the
    prediction changes the scale of the rest (as ``common.score``'s brain minimum and ``robust_psnr``'s
    percentiles of the prediction do)."""
    return psnr(reference, prediction, data_range=1.0, mask=np.asarray(mask) > 0)


def robust_psnr(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray) -> float:
    """Brain PSNR with each image scaled by its brain 0.5th and 99.5th percentiles (clipped to [0, 1]).

    ``common.score``'s brain scaling maps each image's brain *minimum* to 0, so one dark voxel of a prediction
    (an interpolation undershoot, an edge) rescales all of it; this column shows how much of a gap that is."""
    mask = np.asarray(mask) > 0

    def scaled(image: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(image[mask], [0.5, 99.5])
        return np.clip((image[mask].astype(np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)

    mse = float(np.mean((scaled(reference) - scaled(prediction)) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def real_case(spacing: float) -> dict[str, Any] | None:
    """The ICBM152 T1w/T2w templates resampled from 2 mm to the phantom's spacing (trilinear)."""
    if not (REAL_DIR / "T1w_icbm152avg.nii.gz").is_file():
        return None
    t1, geometry = read_image(REAL_DIR / "T1w_icbm152avg.nii.gz")
    t2 = read_image(REAL_DIR / "T2w_icbm152avg.nii.gz")[0]
    mask = read_image(REAL_DIR / "brainmask_bin.nii.gz")[0]
    shape = tuple(max(8, int(round(n * s / spacing))) for n, s in zip(t1.shape, geometry.spacing_zyx))
    t1, t2 = upsample(t1, shape, "trilinear"), upsample(t2, shape, "trilinear")
    mask = upsample(mask.astype(np.float32), shape, "trilinear") >= 0.5
    return {"id": "ICBM152", "mask": mask, "T1w": normalise(t1, mask), "T2w": normalise(t2, mask)}


def memory_child(kind: str, out: Path) -> None:
    """Peak RSS of one 1 mm 182 x 218 x 182 output (conv on the 1 mm source, or LIIF from 1 x 1 x 4 mm)."""
    torch.manual_seed(0)
    network = build(kind, 4.0).eval()
    shape, tile = (182, 218, 182), (64, 64, 64)
    started = time.perf_counter()
    base = peak_rss_mib()
    if liif_decoder_of(network) is None:
        source = np.random.default_rng(0).random(shape, dtype=np.float32)
        with torch.inference_mode():
            def forward(patch: torch.Tensor) -> torch.Tensor:
                return network(patch, TEXT["T1w"].expand(patch.shape[0], -1), TEXT["T2w"].expand(patch.shape[0], -1)).synthesis
            result = sliding_window_predict(torch.from_numpy(source[None]), forward, tile, step_size=1.0)[0].numpy()
    else:
        source = np.random.default_rng(0).random((46, 218, 182), dtype=np.float32)
        positions = [(np.arange(n) + 0.5) * (m / n) - 0.5 for n, m in zip(shape, source.shape)]
        cell = [m / n for n, m in zip(shape, source.shape)]
        result, _ = liif_tiled_prediction(source[None], [network], TEXT["T1w"], TEXT["T2w"], positions, cell, tile, 1.0)
    out.write_text(json.dumps({"kind": kind, "shape": list(result.shape), "peak_rss_mib": round(peak_rss_mib(), 1),
                               "rss_before_mib": round(base, 1), "seconds": round(time.perf_counter() - started, 1)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test_cases", type=int, default=3)
    parser.add_argument("--factor", type=float, default=4.0, help="slice thickness / fine spacing along z (default 4)")
    parser.add_argument("--train_seconds", type=float, default=300.0, help="wall clock per network (default 300)")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64))
    parser.add_argument("--voxel_size", type=float, default=3.2)
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["liif"],
                        help="LIIF variants trained beside the conv network with the same budget (default: liif)")
    parser.add_argument("--memory", action="store_true", help="also the 182 x 218 x 182 memory comparison")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and patch sampling (the phantom stays the same)")
    parser.add_argument("--lr_schedule", choices=("poly", "constant"), default="poly",
                        help="learning rate over each network's budget: poly decay to 0 (default) or constant 1e-3")
    parser.add_argument("--reuse", action="store_true",
                        help="score the networks saved in <out>/networks by an earlier run instead of training")
    parser.add_argument("--memory_child", choices=("conv", *VARIANTS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.memory_child:
        memory_child(args.memory_child, args.out / f"memory_{args.memory_child}.json")
        return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = args.out / "phantom"
    if not (data / "dataset.json").is_file():
        generate_phantom_dataset(data, args.cases, seed=20, shape=tuple(args.shape), voxel_size_mm=(args.voxel_size,) * 3,
                                 modalities=("T1w", "T2w"), complete=True, overwrite=True)
    cases = load_cases(data)
    train_cases, test_cases = cases[: -args.test_cases], cases[-args.test_cases:]
    patch = tuple(args.patch)
    names = ["conv", *args.variants]
    saved = args.out / "networks"
    if args.reuse and all((saved / f"{n}.pt").is_file() for n in names):  # score again without training
        networks = {}
        for name in names:
            networks[name] = build(name, args.factor, args.seed)
            networks[name].load_state_dict(torch.load(saved / f"{name}.pt", weights_only=True))
            networks[name].eval()
        training = json.loads((saved / "training.json").read_text())
    else:
        networks, training = train(names, train_cases, args.factor, args.train_seconds, patch, args.seed, args.lr_schedule)
        saved.mkdir(exist_ok=True)
        for name, network in networks.items():
            torch.save(network.state_dict(), saved / f"{name}.pt")
        (saved / "training.json").write_text(json.dumps(training, indent=2))
    logger.info("trained: %s", training)
    per_case = {}
    with torch.inference_mode():
        for case in test_cases:
            per_case[case["id"]] = evaluate(networks, case["T1w"], case["T2w"], case["mask"], args.factor, patch)
            logger.info("%s: %s", case["id"], {k: v["psnr"] for k, v in per_case[case["id"]].items()})
        real = real_case(args.voxel_size)
        real_scores = evaluate(networks, real["T1w"], real["T2w"], real["mask"], args.factor, patch) if real else None
    methods = list(next(iter(per_case.values())))
    keys = ("psnr_contract", "psnr", "ssim", "psnr_p05", "psnr_image", "ssim_image", "seconds")
    summary = {m: {k: round(float(np.mean([c[m][k] for c in per_case.values()])), 4) for k in keys} for m in methods}
    memory = {}
    if args.memory:
        import subprocess

        for kind in ("conv", *args.variants):
            subprocess.run([sys.executable, __file__, "--out", str(args.out), "--memory_child", kind], check=True)
            memory[kind] = json.loads((args.out / f"memory_{kind}.json").read_text())
    result = {"machine": machine_info(), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "training": training, "per_case": per_case, "summary": summary, "real_icbm152": real_scores, "memory": memory}
    (args.out / "liif_resolution.json").write_text(json.dumps(result, indent=2))
    real_keys = ("psnr_contract", "psnr", "ssim", "psnr_p05", "psnr_image")
    rows = [[m, *(summary[m][k] for k in keys),
             *((real_scores[m][k] for k in real_keys) if real_scores else ("-",) * len(real_keys))] for m in methods]
    lines = md_table(["method", "PSNR contract", "PSNR min", "SSIM", "PSNR p0.5", "PSNR image", "SSIM image", "s / case",
                      "ICBM PSNR contract", "ICBM PSNR min", "ICBM SSIM", "ICBM PSNR p0.5", "ICBM PSNR image"], rows)
    lines += ["", *md_table(["network", "steps", "s", "final loss"],
                            [[k, v["steps"], v["seconds"], v["final_loss"]] for k, v in training.items()])]
    if memory:
        lines += ["", *md_table(["decoder", "peak RSS MiB", "s"], [[k, v["peak_rss_mib"], v["seconds"]] for k, v in memory.items()])]
    (args.out / "liif_resolution.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
