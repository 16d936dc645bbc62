"""Synthetic CT with a skull (issue 17): the loss region of CT targets, head against brain, side by side.

Trains the demo twice through :func:`unisyn_v2.demo.run_demo` (the 20-case phantom, NeuroCLIP then the GFM on
T1w -> CT and T1w -> FDG-PET, CPU plan; the second variant reuses the first's phantom, preprocessing and
NeuroCLIP, so only the GFM differs), once with ``training.loss_region`` CT = ``head`` (the default now) and
once with CT = ``brain`` (the former weighting: everything outside the brain at 0.01). For each it reports

- held-out phantom subjects (the demo's evaluation, whole T1w input -> CT in HU): bone Dice (> 300 HU) and bone
  MAE against the truth, MAE in the head and in the brain, the lowest HU written; the FDG-PET's lowest SUV;
- the real ICBM152 T1w template (with its brain mask) -> CT: the mean synthetic HU inside the real CT template's
  skull (its voxels > 300 HU; the CT template is another population, in register at template level), bone Dice
  against it, grey/white matter means; ``../shared/data/real_mni2mm`` (skipped when absent).

Targets: bone Dice >= 0.7 on held-out phantom subjects, mean HU >= 300 in the real skull, no CT below -1024 HU
and no negative SUV. The best published SynthRAD2023 brain MR -> CT MAE is about 55 HU over the head
(challenge report, real patients): a reference, not a comparison.

Run from the repository root:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/skull_synthesis.py --out /tmp/bench_skull
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import command_and_notes, command_line, machine_info, machine_line, md_table, setup_logging, write_outputs  # noqa: E402
from bench_data import use_work_folder  # noqa: E402
from unisyn_v2.dataset.image_io import read_image  # noqa: E402
from unisyn_v2.demo import DemoOptions, run_demo  # noqa: E402
from unisyn_v2.evaluation.metrics import bone_metrics  # noqa: E402
from unisyn_v2.experiment_planning.api import PlanChoices  # noqa: E402
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor  # noqa: E402
from unisyn_v2.networks.text_artifact import NEUROCLIP_TRAINER_NAME  # noqa: E402

logger = logging.getLogger("skull_synthesis")
DEFAULT_REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_mni2mm"
SYNTHRAD_BEST_MAE_HU = 55.0  # SynthRAD2023 task 1 (brain MR -> CT), best final-test MAE, rounded: a reference only


def _real_template(model_folder: Path, real_dir: Path, work: Path) -> dict[str, Any] | None:
    """T1w template -> CT and FDG-PET with the trained model; scores against the real CT template's skull."""
    t1, ct_path, mask_path = (real_dir / n for n in ("T1w_icbm152avg.nii.gz", "CT_rorden30_HU.nii.gz", "brainmask_bin.nii.gz"))
    if not all(p.is_file() for p in (t1, ct_path, mask_path)):
        logger.warning("real templates not found in %s; skipped", real_dir)
        return None
    inputs = work / "real_inputs"
    case = inputs / "icbm"
    case.mkdir(parents=True, exist_ok=True)
    for source, name in ((t1, "icbm_T1w.nii.gz"), (mask_path, "icbm_brainmask.nii.gz")):
        (case / name).write_bytes(source.read_bytes())
    (inputs / "dataset.json").write_text(json.dumps({"name": "real", "cases": [{
        "id": "icbm", "images": [{"file": "icbm/icbm_T1w.nii.gz", "modality": "T1w",
                                  "metadata": {"field_strength": 1.5, "repetition_time": 18.0, "echo_time": 10.0,
                                               "flip_angle": 30.0}}],
        "brain_mask": "icbm/icbm_brainmask.nii.gz"}]}))
    predictor = UniSynPredictor.from_model_folder(model_folder, folds=[0], device="cpu",
                                                  settings=PredictionSettings(progress=False))
    out: dict[str, Any] = {}
    for target in ("CT", "FDG-PET"):
        predictor.predict([inputs], work / "real_predictions" / target, target, overwrite=True)
        out[target] = read_image(work / "real_predictions" / target / f"icbm_{target}.nii.gz")[0]
    real_ct, _ = read_image(ct_path)
    brain = read_image(mask_path)[0] > 0.5
    skull = (real_ct > 300) & ~brain
    synthetic = out["CT"]
    bone = bone_metrics(real_ct, synthetic, mask=(real_ct > -500) | (synthetic > -500))
    grey, white = (real_ct > 30) & brain, (real_ct > 15) & (real_ct <= 28) & brain
    return {"skull_mean_hu": float(synthetic[skull].mean()), "real_skull_mean_hu": float(real_ct[skull].mean()),
            "bone_dice_vs_real": bone["bone_dice"], "ct_min_hu": float(synthetic.min()),
            "ct_max_hu": float(synthetic.max()), "pet_min": float(out["FDG-PET"].min()),
            "grey_minus_white_hu": float(synthetic[grey].mean() - synthetic[white].mean()),
            "real_grey_minus_white_hu": float(real_ct[grey].mean() - real_ct[white].mean())}


def _phantom(report: dict[str, Any]) -> dict[str, Any]:
    """The demo's held-out evaluation (whole-head CT in HU) and the lowest values its predictions hold."""
    ct = json.loads(Path(report["evaluations"]["CT"]["summary"]).read_text())["mean"]
    lows = {}
    for target, folder in report["predictions"].items():
        lows[target] = min(float(read_image(p)[0].min()) for p in Path(folder).glob(f"*_{target}.nii.gz"))
    validation = report["validation"].get("T1w->CT", {})
    return {"bone_dice": ct.get("bone_dice"), "bone_mae_hu": ct.get("bone_mae"), "head_mae_hu": ct.get("head_mae"),
            "brain_mae_hu": ct.get("mae"), "ct_min_hu": lows.get("CT"), "pet_min": lows.get("FDG-PET"),
            "validation_bone_dice": validation.get("model_bone_dice"),
            "validation_head_mae_hu": validation.get("model_head_mae_hu"), "validation_brain_psnr": validation.get("model")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine_info("cpu"), "command": command_line("skull_synthesis.py", args.argv),
                              "epochs": args.epochs, "variants": {}, "notes": []}
    first: Path | None = None
    for region in args.regions:
        work = args.out / f"ct_{region}"
        if first is not None and not (work / "results").exists():  # the same phantom, preprocessing and NeuroCLIP
            for name in ("raw", "preprocessed"):
                shutil.copytree(first / name, work / name)
            for folder in (first / "results").glob(f"*/{NEUROCLIP_TRAINER_NAME}__*"):
                shutil.copytree(folder, work / "results" / folder.parent.name / folder.name)
        first = first or work
        use_work_folder(work)
        started = time.perf_counter()
        report = run_demo(DemoOptions(epochs=args.epochs, device="cpu", output=work / "demo",
                                      plan_choices=PlanChoices(loss_region={"CT": region})))
        row = {"seconds": round(time.perf_counter() - started, 1), "phantom": _phantom(report),
               "real": _real_template(Path(report["synthesis_model"]), args.real_dir, work)}
        result["variants"][region] = row
        logger.info("CT loss region %s: %s", region, row)
    return result


def markdown(result: dict[str, Any]) -> str:
    def f(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{float(value):.{digits}f}"

    rows = []
    for region, row in result["variants"].items():
        p, r = row["phantom"], row["real"] or {}
        rows.append([f"CT = {region}", f(p["bone_dice"], 3), f(p["bone_mae_hu"]), f(p["head_mae_hu"]), f(p["brain_mae_hu"]),
                     f(p["ct_min_hu"]), f(p["pet_min"], 3), f(r.get("skull_mean_hu")), f(r.get("bone_dice_vs_real"), 3),
                     f(r.get("grey_minus_white_hu")), f(r.get("ct_min_hu")), f(r.get("pet_min"), 3)])
    real = next((row["real"] for row in result["variants"].values() if row["real"]), {}) or {}
    lines = [f"Machine: {machine_line(result['machine'])}; GFM {result['epochs']} epochs per variant.", ""]
    lines += md_table(["loss region", "phantom bone Dice", "bone MAE (HU)", "head MAE (HU)", "brain MAE (HU)",
                       "min CT (HU)", "min SUV", "ICBM skull mean (HU)", "ICBM bone Dice", "ICBM GM-WM (HU)",
                       "ICBM min CT", "ICBM min SUV"], rows)
    lines += ["", f"Real CT template: skull mean {f(real.get('real_skull_mean_hu'))} HU, GM-WM "
                  f"{f(real.get('real_grey_minus_white_hu'))} HU. SynthRAD2023 brain MR -> CT, best MAE about "
                  f"{SYNTHRAD_BEST_MAE_HU:.0f} HU over the head (real patients; a reference, not a comparison)."]
    return "\n".join(lines + [""] + command_and_notes(result)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_skull")
    parser.add_argument("--epochs", type=int, default=60, help="GFM epochs per variant (the demo's 60 by default)")
    parser.add_argument("--regions", nargs="+", default=["head", "brain"], choices=["head", "brain"])
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    setup_logging(args.verbose)
    result = run(args)
    write_outputs(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
