"""Synthesis inside lesions: PSNR in the phantom's lesion label vs in normal brain, per direction (issue 17).

A paired, skull-stripped phantom (T1w, T2w, FLAIR, CT, FDG-PET) whose cases carry pathology with a given
fraction (chronic infarct, WMH, tumour with oedema and necrosis; ``unisyn_phantom --lesions all``) is
planned and preprocessed with the CPU plan; NeuroCLIP and one joint GFM train on the fold's training
cases (lesion cases among them), and the fold's held-out cases are predicted from raw images. Scores:
PSNR inside the lesion label (all labels > 0) and inside normal brain (brain mask minus the lesions
dilated by one voxel), on the held-out cases with pathology, after scaling each image by the statistics
of its own normal brain tissue (min -> 0, 99.5th percentile -> 1, not clipped, so a lesion brighter than
normal tissue keeps its error). The papers' scaling with statistics of the whole brain (clipped to
[0, 1]) is reported as well: there a bright lesion (FLAIR oedema) sets the 99.5th percentile, so a
prediction that misses it is mis-scaled in normal tissue too. Per lesion class, PSNR of the pooled
squared error; histogram matching of the source as a reference. Target: lesion PSNR within 3 dB of
normal tissue.

The phantom names each case's label map as its ``lesion_mask`` in dataset.json, so training can centre a
share of its patches on lesions (plans ``training.lesion_oversample``) and weight the loss there
(``training.lesion_weight``). ``--variants`` trains one GFM per ``OVERSAMPLE:WEIGHT`` setting in the same run
(same data, NeuroCLIP, seed and budget; each a plans file of its own beside the dataset's plans), so the
settings are compared side by side.

Run from the repository root:
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lesion_synthesis.py --out /tmp/lesion_bench
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lesion_synthesis.py --out /tmp/lesion_bench --variants 0:1,0.33:1,0.66:3
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from unisyn_v2.contracts.plans import Plans  # noqa: E402
from unisyn_v2.dataset.image_io import read_image  # noqa: E402
from unisyn_v2.evaluation.protocols import PAPERS_UPPER_PERCENTILE, lesion_psnr  # noqa: E402
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality  # noqa: E402
from unisyn_v2.experiment_planning import api  # noqa: E402
from unisyn_v2.io_utils import finite_or_none, read_json, write_json_atomic  # noqa: E402
from unisyn_v2.paths import preprocessed_dir, raw_dir  # noqa: E402
from unisyn_v2.phantom import generate_phantom_dataset  # noqa: E402
from unisyn_v2.phantom.generator import CASES_KEY, SPEC_FILE  # noqa: E402
from unisyn_v2.training.run_training import build_trainer  # noqa: E402
from unisyn_v2.training.settings import Task, TrainerSettings, task_key  # noqa: E402
from unisyn_v2.contracts.model_layout import TEXT_ENCODER_FOLDER  # noqa: E402

logger = logging.getLogger("benchmarks.lesion_synthesis")

MODALITIES = ("T1w", "T2w", "FLAIR", "CT", "FDG-PET")
# The directions the real stroke patient was scored on (issue 17) and the demo's T1w -> CT / FDG-PET.
TASKS: tuple[Task, ...] = (("T1w", "T2w"), ("FLAIR", "T2w"), ("FLAIR", "T1w"), ("T1w", "FLAIR"), ("T1w", "CT"),
                           ("T1w", "FDG-PET"))
# Lesion classes pooled for the per-class table: label values of unisyn_v2.phantom.pathology.LESION_LABELS.
CLASSES = {"infarct (cavity + gliosis)": (1, 6), "WMH": (2,), "tumour (enhancing + necrosis)": (3, 5), "oedema": (4,)}
TARGET_GAP_DB = 3.0
DEFAULT_VARIANTS = "0:1,0.33:1"  # lesion_oversample:lesion_weight; 0:1 is training without lesion masks' help


def parse_variants(text: str) -> list[tuple[float, float]]:
    """``"0:1,0.33:1"`` -> [(0.0, 1.0), (0.33, 1.0)] (lesion_oversample, lesion_weight)."""
    out = []
    for item in text.split(","):
        oversample, _, weight = item.strip().partition(":")
        out.append((float(oversample), float(weight or 1.0)))
    return out


def variant_label(oversample: float, weight: float) -> str:
    return f"oversample {oversample:g}, weight {weight:g}"


def variant_plans(config: common.BenchmarkConfig, oversample: float, weight: float) -> str:
    """Write (once) the dataset's plans with these two training fields under a plans name of its own."""
    folder = preprocessed_dir() / config.dataset_name
    base = Plans.load(folder / "unisynPlans.json")
    name = f"unisynPlans_os{oversample:g}_lw{weight:g}".replace(".", "p")
    data = base.to_dict()
    data["plans_name"] = name
    data["training"]["lesion_oversample"], data["training"]["lesion_weight"] = oversample, weight
    Plans.from_dict(data, source=name)  # validated like a file on load
    path = folder / f"{name}.json"
    if not path.is_file():
        write_json_atomic(path, data)
    return name


def train_variant(config: common.BenchmarkConfig, plans_name: str, text_encoder: Path) -> Path:
    """The GFM on TASKS with one plans variant (the dataset's NeuroCLIP); reused when already trained."""
    settings = TrainerSettings(num_epochs=config.epochs, iterations_per_epoch=config.iterations_per_epoch, tasks=TASKS,
                               continue_training=True, final_validation=False, num_workers=config.num_workers,
                               extra={"text_encoder": str(text_encoder)})
    instance = build_trainer(config.dataset_id, "gfm", config.fold, plans_name=plans_name, device=config.device,
                             settings=settings)
    return common.run_or_reuse(config, instance, settings, f"gfm with {plans_name}")[0]


def ensure_dataset(config: common.BenchmarkConfig, fraction: float) -> Path:
    """Write (once) the lesion phantom and plan/preprocess it with the CPU plan."""
    root = raw_dir() / config.dataset_name
    if not (root / "dataset.json").is_file():
        started = time.perf_counter()
        generate_phantom_dataset(root, config.cases, config.seed, shape=config.shape, voxel_size_mm=config.voxel_size,
                                 modalities=MODALITIES, complete=True, skull_strip=True, name=config.name,
                                 lesions="all", lesion_fraction=fraction)
        logger.info("wrote the lesion phantom (%d cases) in %.0f s", config.cases, time.perf_counter() - started)
    if not (preprocessed_dir() / config.dataset_name / "unisynPlans.json").is_file():
        api.plan_and_preprocess(config.dataset_id, planner=config.planner, num_processes=1, progress=False,
                                verify_integrity=True)
    return root


def normal_scale(image: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """min -> 0, 99.5th percentile -> 1 over the image's normal brain tissue, unclipped."""
    values = image[normal].astype(np.float64)
    lo, hi = float(values.min()), float(np.percentile(values, PAPERS_UPPER_PERCENTILE))
    return (image.astype(np.float64) - lo) / max(hi - lo, 1e-12)


def region_psnr(ref: np.ndarray, pred: np.ndarray, region: np.ndarray) -> tuple[float | None, float, int]:
    """(PSNR dB at data range 1, summed squared error, voxels) inside ``region`` of scaled images (PSNR
    None for an empty region or a perfect match, so the results stay valid JSON)."""
    err = (ref[region] - pred[region]) ** 2
    n = int(region.sum())
    if n == 0:
        return None, 0.0, 0
    mse = float(err.mean())
    return finite_or_none(10.0 * math.log10(1.0 / mse) if mse > 0 else None), float(err.sum()), n


def score_case(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray, labels: np.ndarray,
               absolute_units: bool = False) -> dict[str, Any]:
    """Lesion, normal tissue and per-class scores of one prediction (normal-tissue scaling), and lesion and
    normal PSNR with the papers' whole-brain scaling (``*_brain_scaled``). With ``absolute_units`` (CT in HU,
    PET in SUV: reference and prediction share a unit) also ``*_units``: both images on the reference's brain
    range, one map (:func:`unisyn_v2.evaluation.protocols.lesion_psnr`, what validation reports), so a
    prediction is not rescaled by its own normal tissue."""
    lesion = (labels > 0) & mask
    normal = mask & ~ndimage.binary_dilation(labels > 0, iterations=1)
    ref, pred = normal_scale(reference, normal), normal_scale(candidate, normal)
    out: dict[str, Any] = {"lesion_voxels": int(lesion.sum())}
    out["psnr_normal"], _, _ = region_psnr(ref, pred, normal)
    out["psnr_lesion"], out["sse_lesion"], _ = region_psnr(ref, pred, lesion)
    out["classes"] = {}
    for name, values in CLASSES.items():
        region = np.isin(labels, values) & mask
        if region.any():
            _, sse, n = region_psnr(ref, pred, region)
            out["classes"][name] = {"sse": sse, "n": n}
    ref_b, pred_b = common.brain_scale(reference, mask), common.brain_scale(candidate, mask)
    out["psnr_normal_brain_scaled"], _, _ = region_psnr(ref_b, pred_b, normal)
    out["psnr_lesion_brain_scaled"], _, _ = region_psnr(ref_b, pred_b, lesion)
    if absolute_units:
        units = lesion_psnr(reference, candidate, mask, labels)
        out["psnr_lesion_units"], out["psnr_normal_units"] = units.get("lesion_psnr"), units.get("normal_psnr")
    return out


def pooled_psnr(entries: list[dict[str, float]]) -> float | None:
    """PSNR of the squared error pooled over voxels of several cases."""
    n = sum(e["n"] for e in entries)
    if n == 0:
        return None
    mse = sum(e["sse"] for e in entries) / n
    return finite_or_none(10.0 * math.log10(1.0 / mse) if mse > 0 else None)


def evaluate(config: common.BenchmarkConfig, root: Path, model_folders: dict[str, Path]) -> dict[str, Any]:
    """Per direction and method (each GFM variant, histogram matching): per-case scores and their summary."""
    train_ids, test_ids = common.split(config)
    records = read_json(root / SPEC_FILE)[CASES_KEY]
    cases = common.load_test_cases(config, test_ids)
    labels = {c.case_id: read_image(root / records[c.case_id]["lesions"])[0].astype(np.int16) for c in cases}
    with_pathology = [c.case_id for c in cases if records[c.case_id]["pathology"]]
    quantiles = common.reference_quantiles(config, train_ids, sorted({t for _, t in TASKS}))
    predictors = {f"GFM, {label}": common.load_predictor(config, folder) for label, folder in model_folders.items()}
    per_case: dict[str, dict[str, dict[str, Any]]] = {}
    for source, target in TASKS:
        key = task_key(source, target)
        per_case[key] = {method: {} for method in [*predictors, "histogram matching"]}
        for case in cases:
            candidates = {method: common.predict_raw(predictor, case.images[source], case.geometry,
                                                     case.descriptions[source], case.descriptions[target], case.mask)
                          for method, predictor in predictors.items()}
            candidates["histogram matching"] = common.baselines(case.images[source], case.mask,
                                                                quantiles[target])["histogram matching"]
            for method, candidate in candidates.items():
                per_case[key][method][case.case_id] = score_case(
                    case.images[target], candidate, case.mask, labels[case.case_id],
                    absolute_units=get_modality(target).family in (ModalityFamily.CT, ModalityFamily.PET))
    summary: dict[str, Any] = {}
    for key, methods in per_case.items():
        summary[key] = {}
        for method, scores in methods.items():
            lesion_cases = [scores[c] for c in with_pathology]
            healthy = [scores[c] for c in scores if c not in with_pathology]
            def mean(field: str, rows: list[dict[str, Any]]) -> float | None:
                values = [r[field] for r in rows if r[field] is not None]
                return float(np.mean(values)) if values else None

            lesion, normal = mean("psnr_lesion", lesion_cases), mean("psnr_normal", lesion_cases)
            lesion_b, normal_b = mean("psnr_lesion_brain_scaled", lesion_cases), mean("psnr_normal_brain_scaled", lesion_cases)
            summary[key][method] = {
                "psnr_lesion": lesion, "psnr_normal": normal,
                "gap_db": None if lesion is None or normal is None else normal - lesion,
                "psnr_lesion_brain_scaled": lesion_b, "psnr_normal_brain_scaled": normal_b,
                "gap_db_brain_scaled": None if lesion_b is None or normal_b is None else normal_b - lesion_b,
                "psnr_normal_healthy_cases": mean("psnr_normal", healthy),
                **({"psnr_lesion_units": mean("psnr_lesion_units", lesion_cases),
                    "psnr_normal_units": mean("psnr_normal_units", lesion_cases)}
                   if "psnr_lesion_units" in lesion_cases[0] else {}),
                "classes": {name: pooled_psnr([s["classes"][name] for s in lesion_cases if name in s["classes"]])
                            for name in CLASSES}}
    return {"train_cases": train_ids, "test_cases": test_ids, "test_cases_with_pathology": with_pathology,
            "pathology": {c: records[c]["pathology"] for c in test_ids}, "per_case": per_case, "summary": summary}


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(config: common.BenchmarkConfig, result: dict[str, Any], fraction: float) -> str:
    """The BENCHMARKS.md tables: the gap of every variant side by side, then per variant lesion vs normal PSNR."""
    methods = [m for m in next(iter(result["summary"].values())) if m != "histogram matching"]
    lines = ["Gap (normal - lesion PSNR, dB) per direction and training variant (lesion_oversample, lesion_weight):", "",
             "| direction | " + " | ".join(m.removeprefix("GFM, ") for m in methods) + " | hist. match |",
             "|---|" + "---|" * (len(methods) + 1)]
    for key, scores in result["summary"].items():
        lines.append(f"| {key} | " + " | ".join(f"{_f(scores[m]['gap_db'])} ({_f(scores[m]['psnr_lesion'])} / "
                                                 f"{_f(scores[m]['psnr_normal'])})" for m in methods)
                     + f" | {_f(scores['histogram matching']['gap_db'])} |")
    lines += ["", "(cells: gap (lesion / normal PSNR))", "",
              "CT and PET in their units (HU, SUV; both images on the reference's brain range): gap (lesion / normal)", "",
              "| direction | " + " | ".join(m.removeprefix("GFM, ") for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for key, scores in result["summary"].items():
        if "psnr_lesion_units" in scores[methods[0]]:
            cells = [(scores[m]["psnr_lesion_units"], scores[m]["psnr_normal_units"]) for m in methods]
            lines.append(f"| {key} | " + " | ".join(
                f"{_f(None if l is None or n is None else n - l)} ({_f(l)} / {_f(n)})" for l, n in cells) + " |")
    lines.append("")
    for method in methods:
        lines += [f"**{method}**", "", _variant_table(config, result, fraction, method), ""]
    return "\n".join(lines)


def _variant_table(config: common.BenchmarkConfig, result: dict[str, Any], fraction: float, method: str) -> str:
    """One variant's table: per direction, lesion vs normal PSNR, the gap, per lesion class."""
    summary = result["summary"]
    lines = [f"{config.cases} cases, {fraction:.0%} with pathology (infarct, WMH, tumour); held-out: "
             f"{len(result['test_cases'])} cases, {len(result['test_cases_with_pathology'])} with pathology "
             f"({', '.join(result['test_cases_with_pathology'])}); GFM trained {config.budget_text()} on "
             f"{len(TASKS)} directions. PSNR (dB), each image scaled by its normal brain tissue, mean over the held-out "
             f"cases with pathology; gap = normal - lesion (target <= {TARGET_GAP_DB:.0f} dB); last column: the gap "
             "with the papers' whole-brain scaling.", "",
             "| direction | GFM lesion | GFM normal | GFM gap | hist. match gap | GFM normal, healthy cases | "
             + " | ".join(f"GFM {n}" for n in CLASSES) + " | GFM gap, brain-scaled |",
             "|---|---|---|---|---|---|" + "---|" * len(CLASSES) + "---|"]
    for key, methods in summary.items():
        g, h = methods[method], methods["histogram matching"]
        lines.append(f"| {key} | {_f(g['psnr_lesion'])} | {_f(g['psnr_normal'])} | {_f(g['gap_db'])} | {_f(h['gap_db'])} | "
                     f"{_f(g['psnr_normal_healthy_cases'])} | " + " | ".join(_f(g["classes"][n]) for n in CLASSES)
                     + f" | {_f(g['gap_db_brain_scaled'])} |")
    met = [k for k, m in summary.items() if m[method]["gap_db"] is not None and m[method]["gap_db"] <= TARGET_GAP_DB]
    lines += ["", f"Within {TARGET_GAP_DB:.0f} dB: {len(met)} of {len(summary)} directions ({', '.join(met) or 'none'})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "unisyn_lesion_bench",
                        help="output folder (workspace with dataset and models, results)")
    parser.add_argument("--cases", type=int, default=30, help="phantom cases (default 30; fold 0 holds out 6)")
    parser.add_argument("--lesion-fraction", type=float, default=0.5, help="fraction of cases with pathology (default 0.5)")
    parser.add_argument("--epochs", type=int, default=70, help="GFM epochs (default 70)")
    parser.add_argument("--iterations-per-epoch", type=int, default=25, help="iterations per epoch (default 25)")
    parser.add_argument("--neuroclip-epochs", type=int, default=8, help="NeuroCLIP epochs (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"GFMs to train side by side, OVERSAMPLE:WEIGHT (plans training.lesion_oversample and "
                             f"lesion_weight) separated by commas (default {DEFAULT_VARIANTS})")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    config = common.BenchmarkConfig(out=args.out.resolve(), quick=True, dataset_id=971, name="UniSynLesions",
                                    cases=args.cases, seed=args.seed, neuroclip_epochs=args.neuroclip_epochs,
                                    epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                                    task_specific=(), device=args.device, threads=args.threads,
                                    extra={"lesion_fraction": args.lesion_fraction, "tasks": [list(t) for t in TASKS],
                                           "variants": args.variants})
    common.setup(config, args.verbose)
    started = time.perf_counter()
    root = ensure_dataset(config, args.lesion_fraction)
    neuroclip, _ = common.train(config, "neuroclip")
    folders = {variant_label(o, w): train_variant(config, variant_plans(config, o, w), neuroclip / TEXT_ENCODER_FOLDER)
               for o, w in parse_variants(args.variants)}
    trained = time.perf_counter()
    result = evaluate(config, root, folders)
    result["training_seconds"] = {label: common.training_seconds(config, folder) for label, folder in folders.items()}
    result["wall_seconds"] = {"until_trained": round(trained - started, 1), "total": round(time.perf_counter() - started, 1)}
    text = markdown(config, result, args.lesion_fraction)
    common.write_results(config, "lesion_synthesis", result, text)
    logger.info("lesion synthesis done in %.0f s\n%s", time.perf_counter() - started, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
