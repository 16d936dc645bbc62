"""Real images: phantom-trained models applied to the real MNI 2 mm templates (T1w -> T2w, PD, CT).

The models of the synthesis benchmark (trained only on the phantom) get the ICBM152 average T1w
(skull-stripped with the template brain mask, as the phantom was) and predict T2w and PD (the same 152
people, dual-echo spin echo TE 120 / 35 ms, TR 3300 ms, 1.5 T) and CT (a template of 30 other people,
in HU, in register at template level only). Scores are inside the brain mask: PSNR/SSIM with the
papers' scaling taken in the brain, MAE in HU for CT; identity and histogram matching (to the
phantom's training histograms) are the baselines. Population averages have no noise and blurred
anatomy, so this scores contrast mapping, not detail. Needs ``../shared/data/real_mni2mm`` (see its
README); without it the script says so and exits 0.

Run from the repository root:  .venv/bin/python benchmarks/real_templates.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from unisyn_v2.dataset.image_io import read_image  # noqa: E402
from unisyn_v2.evaluation.figures import save_comparison_figure  # noqa: E402
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata  # noqa: E402
from unisyn_v2.metadata.prompts import ImageDescription  # noqa: E402

logger = logging.getLogger("benchmarks.real_templates")
DEFAULT_REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_mni2mm"
# ICBM152 acquisition (Mazziotta et al. 1995/2001): 1.5 T Philips Gyroscan; T1w spoiled FLASH TR 18 ms,
# TE 10 ms, flip 30 deg; T2w/PD dual-echo spin echo TR 3300 ms, TE 120 / 35 ms. Subjects: young adults.
SUBJECT = SubjectMetadata(age=25.0)
MR_SCANNER = {"field_strength": 1.5, "manufacturer": "Philips", "voxel_size": (2.0, 2.0, 2.0)}
SOURCE = ImageDescription("T1w", ImageMetadata(repetition_time=18.0, echo_time=10.0, flip_angle=30.0, **MR_SCANNER), SUBJECT)
TARGETS = {
    "T2w": ("T2w_icbm152avg.nii.gz", ImageMetadata(repetition_time=3300.0, echo_time=120.0, flip_angle=90.0, **MR_SCANNER)),
    "PD": ("PDw_icbm152avg.nii.gz", ImageMetadata(repetition_time=3300.0, echo_time=35.0, flip_angle=90.0, **MR_SCANNER)),
    "CT": ("CT_rorden30_HU.nii.gz", ImageMetadata(kvp=120.0, voxel_size=(2.0, 2.0, 2.0))),
}


def models(config: common.BenchmarkConfig) -> dict[str, Path]:
    """Joint models plus the task-specific ones of the tasks this script predicts (all cached by script 1)."""
    common.train(config, "neuroclip")
    out = {label: common.train(config, trainer)[0] for label, trainer in
           (("GFM (joint)", "gfm"), ("CrossAttn (joint)", "crossattn"), ("One-hot GFM (joint)", "onehot"))}
    for source, target in config.task_specific:
        if source == "T1w" and target in TARGETS:
            out[f"GFM task-specific {target}"] = common.train(config, "gfm_task", ((source, target),))[0]
            out[f"U-Net {target}"] = common.train(config, "unet", ((source, target),))[0]
    return out


def run(config: common.BenchmarkConfig, real_dir: Path) -> dict[str, Any]:
    mask = read_image(real_dir / "brainmask_bin.nii.gz")[0] > 0.5
    t1, geometry = read_image(real_dir / "T1w_icbm152avg.nii.gz")
    t1 = np.where(mask, t1, 0.0).astype(np.float32)
    train_ids, _ = common.split(config)
    quantiles = common.reference_quantiles(config, train_ids, list(TARGETS))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    figures = config.out / "real_templates"
    for label, folder in models(config).items():
        predictor = common.load_predictor(config, folder)
        for target, (file, metadata) in TARGETS.items():
            if label.split()[-1] in TARGETS and label.split()[-1] != target:
                continue  # a task-specific model predicts its own target only
            reference = read_image(real_dir / file)[0]
            prediction = common.predict_raw(predictor, t1, geometry, SOURCE, ImageDescription(target, metadata, SUBJECT), mask)
            scores.setdefault(target, {})[label] = common.score(reference, prediction, mask, target)
            save_comparison_figure(figures / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}_{target}.png",
                                   common.brain_scale(t1, mask), common.brain_scale(prediction, mask),
                                   common.brain_scale(reference, mask),
                                   spacing_zyx=geometry.spacing_zyx, suptitle=f"{label}: real T1w -> {target}")
            logger.info("%s -> %s: %s", label, target, scores[target][label])
    for target, (file, _metadata) in TARGETS.items():
        reference = read_image(real_dir / file)[0]
        for name, candidate in common.baselines(t1, mask, quantiles[target]).items():
            values = common.score(reference, candidate, mask, target)
            if name == "identity":
                values.pop("mae_hu", None)
            scores[target][name] = values
    return {"real_dir": str(real_dir), "scores": scores, "figures": str(figures)}


def markdown(config: common.BenchmarkConfig, result: dict[str, Any]) -> str:
    lines = [f"Source: ICBM152 average T1w (skull-stripped with brainmask_bin), predicted by phantom-trained models "
             f"({config.budget_text()}); one volume per target, so no sd. PSNR/SSIM: papers' scaling inside the brain "
             "mask; MAE in HU for CT.", "", "| target | method | PSNR (dB) | SSIM | MAE (HU) |", "|---|---|---|---|---|"]
    for target, per in result["scores"].items():
        for method, v in per.items():
            mae = f"{v['mae_hu']:.1f}" if "mae_hu" in v else "–"
            lines.append(f"| T1w -> {target} | {method} | {v['psnr']:.2f} | {v['ssim']:.3f} | {mae} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR, help="the real_mni2mm folder")
    args = parser.parse_args(argv)
    config = common.make_config(args)
    common.setup(config, args.verbose)
    if not (args.real_dir / "brainmask_bin.nii.gz").is_file():
        logger.warning("skipped: %s (the real MNI 2 mm templates, ../shared/data/real_mni2mm) is absent", args.real_dir)
        return 0
    started = time.perf_counter()
    common.ensure_dataset(config)
    result = run(config, args.real_dir.resolve())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(config, result)
    common.write_results(config, "real_templates", result, text)
    logger.info("real templates done in %.0f s\n%s", time.perf_counter() - started, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
