"""Slab seams of a 2.5D model (issue 17, item 3): the old blending against a slab at every z slice, side by side.

Trains (or reuses, from the same ``--out``) a demo-like 2.5D GFM through :func:`unisyn_v2.demo.run_demo`
with a short budget, then predicts T1w -> CT and T1w -> FDG-PET twice on the same preprocessed grid:
``old`` (the nnU-Net step of k/2 slices along z, ``slab_z_step=None``) and ``new`` (the default: a slab at
every slice, ``slab_z_step=1``). Sources: the demo phantom's held-out cases and, when present, the real
ICBM152 T1w template with its brain mask (``../shared/data/real_mni2mm``). It reports the seam ratio of
:mod:`unisyn_v2.evaluation.seams` at the old slab grid's hand-over pairs (target <= 1.1), the
prediction time of one pass (median of ``--repeats``) and, on the phantom, the brain MAE against the
truth in the normalised scale (so the fix is not bought with accuracy).

Run from the repository root:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seams.py --out /tmp/bench_seams
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import command_and_notes, command_line, machine_info, machine_line, md_table, setup_logging, write_outputs  # noqa: E402
from bench_data import use_work_folder  # noqa: E402
from unisyn_v2.dataset.description import load_dataset_description  # noqa: E402
from unisyn_v2.dataset.image_io import read_image  # noqa: E402
from unisyn_v2.evaluation.seams import seam_report, slab_boundaries  # noqa: E402
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor  # noqa: E402
from unisyn_v2.models.sliding_window import z_window_layout  # noqa: E402
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata  # noqa: E402
from unisyn_v2.metadata.prompts import ImageDescription  # noqa: E402
from unisyn_v2.preprocessing.case_preprocessor import preprocess_case  # noqa: E402

logger = logging.getLogger("benchmarks.seams")
DEFAULT_REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_mni2mm"
TARGETS = ("CT", "FDG-PET")
BLENDINGS = {"old": None, "new": 1}  # PredictionSettings.slab_z_step
# ICBM152 T1w: 1.5 T Philips, spoiled FLASH TR 18 ms, TE 10 ms, flip 30 deg; young adults (as benchmarks/real_templates.py).
TEMPLATE_SOURCE = ImageDescription("T1w", ImageMetadata(repetition_time=18.0, echo_time=10.0, flip_angle=30.0, field_strength=1.5,
                                                        manufacturer="Philips", voxel_size=(2.0, 2.0, 2.0)), SubjectMetadata(age=25.0))


def train_model(args: argparse.Namespace) -> tuple[Path, Path, list[str]]:
    """The demo pipeline at a short budget (resumed from ``--out``); returns (model folder, raw dataset, held-out ids)."""
    from unisyn_v2.demo import DemoOptions, run_demo
    from unisyn_v2.experiment_planning.splits import fold_cases
    from unisyn_v2.io_utils import read_json
    from unisyn_v2.paths import preprocessed_dir

    use_work_folder(args.out / "workspace")
    options = DemoOptions(cases=args.cases, epochs=args.epochs, neuroclip_epochs=args.neuroclip_epochs, device=args.device,
                          planner="cpu", output=args.out / "demo")
    report = run_demo(options)
    raw = Path(report["raw_dataset"])
    _train, held_out = fold_cases(read_json(preprocessed_dir() / raw.name / "splits_final.json"), 0, [])
    return Path(report["synthesis_model"]), raw, list(held_out)


def timed_prediction(predictor: UniSynPredictor, data: np.ndarray, source: ImageDescription, target: ImageDescription,
                     repeats: int) -> tuple[np.ndarray, float]:
    """Normalised prediction on the preprocessed grid and the median seconds of ``repeats`` passes."""
    seconds, prediction = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        prediction = predictor.predict_normalized(data[:1], source, target)
        seconds.append(time.perf_counter() - started)
    assert prediction is not None
    return prediction, statistics.median(seconds)


def measure(predictors: dict[str, UniSynPredictor], data: np.ndarray, mask: np.ndarray, source: ImageDescription,
            subject: SubjectMetadata | None, truths: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """Seam ratio, time and (with a truth) brain MAE of every target and blending on one preprocessed case."""
    k = next(iter(predictors.values())).configuration.patch_size[0]
    starts, weights = z_window_layout(data.shape[1], k)  # the old grid: where a slab hands over to the next
    boundaries = slab_boundaries(data.shape[1], starts, weights)
    rows: dict[str, Any] = {}
    for target in TARGETS:
        description = ImageDescription(target, ImageMetadata(), subject)
        for label, predictor in predictors.items():
            prediction, seconds = timed_prediction(predictor, data, source, description, repeats)
            report = seam_report(prediction, boundaries, guide=data[0], mask=mask)
            row = {"seam_ratio": round(report.ratio, 3), "boundary_mean": report.boundary_mean, "inside_mean": report.inside_mean,
                   "seconds": round(seconds, 3)}
            if target in truths:
                row["brain_mae_normalised"] = round(float(np.abs(prediction - truths[target])[mask > 0].mean()), 4)
            rows.setdefault(target, {})[label] = row
            logger.info("%s %s: %s", target, label, row)
    return {"shape_zyx": list(data.shape[1:]), "slab_depth": k, "boundaries": len(boundaries), "targets": rows}


def phantom_cases(predictors: dict[str, UniSynPredictor], raw: Path, held_out: list[str], repeats: int) -> dict[str, Any]:
    """Every held-out phantom case: its T1w (with brain mask) and the truths preprocessed together on one grid."""
    plans = next(iter(predictors.values())).plans
    description = load_dataset_description(raw)
    results = {}
    for case_id in held_out:
        case = description.case(case_id)
        images = [next(i for i in case.images if i.modality == "T1w")] + [next(i for i in case.images if i.modality == t) for t in TARGETS]
        arrays = [read_image(description.path_of(i.file)) for i in images]
        mask = read_image(description.path_of(case.brain_mask))[0] > 0 if case.brain_mask else None
        described = [case.describe(i) for i in images]
        out = preprocess_case([a for a, _ in arrays], described, arrays[0][1], plans, mask, case_id)
        data, grid_mask = out[0], out[1]
        truths = {t: data[1 + i] for i, t in enumerate(TARGETS)}
        results[case_id] = measure(predictors, data, grid_mask, described[0], case.subject, truths, repeats)
    return results


def template_case(predictors: dict[str, UniSynPredictor], real_dir: Path, repeats: int) -> dict[str, Any]:
    """The ICBM152 T1w (whole head, its brain mask given for normalisation, as unisyn_predict would get it)."""
    plans = next(iter(predictors.values())).plans
    mask = read_image(real_dir / "brainmask_bin.nii.gz")[0] > 0.5
    t1, geometry = read_image(real_dir / "T1w_icbm152avg.nii.gz")
    out = preprocess_case([t1], [TEMPLATE_SOURCE], geometry, plans, mask, "icbm152")
    return measure(predictors, out[0], out[1], TEMPLATE_SOURCE, TEMPLATE_SOURCE.subject, {}, repeats)


def summary_rows(label: str, result: dict[str, Any]) -> list[list[Any]]:
    """One markdown row per target: ratio, time and MAE, old against new."""
    rows = []
    for target, by in result["targets"].items():
        old, new = by["old"], by["new"]
        mae = (f"{old['brain_mae_normalised']:.4f} / {new['brain_mae_normalised']:.4f}" if "brain_mae_normalised" in old else "-")
        rows.append([label, f"T1w -> {target}", f"{old['seam_ratio']:.2f}", f"**{new['seam_ratio']:.2f}**",
                     f"{old['seconds']:.2f} / {new['seconds']:.2f} ({new['seconds'] / old['seconds']:.1f}x)", mae])
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for case_id, case in result["phantom"].items():
        rows += summary_rows(f"phantom {case_id} {tuple(case['shape_zyx'])}", case)
    if result.get("template"):
        rows += summary_rows(f"ICBM152 T1w {tuple(result['template']['shape_zyx'])}", result["template"])
    lines = [f"2.5D model: {result['model']} (slab depth k = {result['slab_depth']}). {machine_line(result['machine'])}",
             "Seam ratio at the old slab grid's hand-over pairs (1.0 = no seam, target <= 1.1); seconds of one "
             "sliding-window pass on the preprocessed grid (median of repeats); brain MAE against the truth in the "
             "normalised scale.", ""]
    lines += md_table(["source", "direction", "seam ratio old", "seam ratio new", "seconds old / new", "brain MAE old / new"], rows)
    return "\n".join(lines + command_and_notes(result)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "unisyn_bench_seams")
    parser.add_argument("--cases", type=int, default=20, help="phantom subjects (the demo's 20)")
    parser.add_argument("--epochs", type=int, default=15, help="GFM epochs (the demo caps at 60)")
    parser.add_argument("--neuroclip-epochs", type=int, default=10)
    parser.add_argument("--max-held-out", type=int, default=2, help="held-out phantom cases measured")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per prediction (median)")
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    args.out = args.out.resolve()
    model, raw, held_out = train_model(args)
    predictors = {label: UniSynPredictor.from_model_folder(model, folds=[0], device=args.device,
                                                           settings=PredictionSettings(progress=False, slab_z_step=step))
                  for label, step in BLENDINGS.items()}
    k = predictors["new"].configuration.patch_size[0]
    notes = []
    result: dict[str, Any] = {"command": command_line("seams.py", argv), "machine": machine_info(args.device),
                              "model": str(model), "slab_depth": k, "torch_threads": torch.get_num_threads(),
                              "phantom": phantom_cases(predictors, raw, held_out[: args.max_held_out], args.repeats)}
    if (args.real_dir / "T1w_icbm152avg.nii.gz").is_file() and (args.real_dir / "brainmask_bin.nii.gz").is_file():
        result["template"] = template_case(predictors, args.real_dir, args.repeats)
    else:
        notes.append(f"{args.real_dir}: no T1w_icbm152avg.nii.gz / brainmask_bin.nii.gz, the real template was skipped")
    result["notes"] = notes
    result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write_outputs(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
