"""Metadata fidelity: does a synthesis follow acquisition parameters never seen in training?

For each held-out phantom subject the anatomy is rebuilt (``common.regenerate_anatomy``) and the phantom's
signal equations simulate the target with the requested parameters, noise- and bias-free: that is the
ground truth. Targets keep the subject's own scanner (field strength, TR, vendor) and change one parameter:
T2w TE below, between and above the training ranges (T2w trained at TE 80-120 ms, PD at 10-30 ms), and
FLAIR TI at and off the CSF null point (training draws TI within +-3% of it). Each model gets the subject's
T1w and a target prompt with those parameters. One-hot cannot express parameters: it produces its
modality's typical image, and the "typical-protocol truth" column shows the best any parameter-blind
method can do (the physics image at the training set's typical protocol scored against the truth).

Run from the repository root:  .venv/bin/python benchmarks/metadata_fidelity.py --quick --out /tmp/bench
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from unisyn_v2.metadata.fields import ImageMetadata  # noqa: E402
from unisyn_v2.metadata.prompts import ImageDescription  # noqa: E402
from unisyn_v2.phantom import simulate_image  # noqa: E402
from unisyn_v2.phantom.protocols import flair_null_ti  # noqa: E402

logger = logging.getLogger("benchmarks.metadata_fidelity")
METHODS = (("GFM (joint)", "gfm"), ("CrossAttn (joint)", "crossattn"), ("One-hot GFM (joint)", "onehot"))


def targets(description: ImageDescription, modality: str) -> list[tuple[str, ImageMetadata]]:
    """(label, metadata) of the probed acquisitions, built on the subject's own ``modality`` protocol."""
    m = description.metadata
    if modality == "T2w":
        rows = [("T2w TE 30 ms (below both ranges)", 30.0), ("T2w TE 50 ms (between PD and T2w ranges)", 50.0),
                ("T2w TE 100 ms (inside the range)", 100.0), ("T2w TE 160 ms (above)", 160.0),
                ("T2w TE 250 ms (far above)", 250.0)]
        return [(label, replace(m, echo_time=te)) for label, te in rows]
    null = flair_null_ti(float(m.repetition_time), float(m.field_strength))
    rows = [("FLAIR TI at the CSF null", 1.0), ("FLAIR TI 0.85 x null (CSF not nulled)", 0.85),
            ("FLAIR TI 0.7 x null", 0.7), ("FLAIR TI 1.15 x null", 1.15)]  # the null depends on TR and field
    return [(label, replace(m, inversion_time=float(round(null * f)))) for label, f in rows]


def truth(config: common.BenchmarkConfig, anatomy: tuple[Any, Any, np.ndarray], modality: str, metadata: ImageMetadata) -> np.ndarray:
    """The physics image for exactly these parameters, without noise or receive bias, skull-stripped."""
    tissues, subject, mask = anatomy
    image = simulate_image(modality, tissues, metadata, subject, np.random.default_rng(0), noise=False, bias=False)
    return np.where(mask > 0, image, 0.0).astype(np.float32)


def typical_metadata(predictor: Any, modality: str, own: ImageMetadata) -> ImageMetadata:
    """The training set's typical protocol of ``modality`` (what one-hot implicitly produces), on the subject's grid."""
    typical = {k: v for k, v in predictor.typical_metadata(modality).items() if k != "voxel_size"}
    return replace(ImageMetadata.from_dict(typical), voxel_size=own.voxel_size)


def run(config: common.BenchmarkConfig) -> dict[str, Any]:
    common.train(config, "neuroclip")
    folders = {label: common.train(config, trainer)[0] for label, trainer in METHODS}
    for source, target in config.task_specific:  # text-conditioned too, so it can follow TE / TI
        if source == "T1w" and target in ("T2w", "FLAIR"):
            folders[f"GFM task-specific {target}"] = common.train(config, "gfm_task", ((source, target),))[0]
    predictors = {label: common.load_predictor(config, folder) for label, folder in folders.items()}
    _train_ids, test_ids = common.split(config)
    cases = common.load_test_cases(config, test_ids)
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    used: dict[str, list[float]] = {}  # the TE / TI (ms) each row used, per subject
    for case in cases:
        anatomy = common.regenerate_anatomy(config, common.case_index(case.case_id))
        if not np.array_equal(anatomy[2] > 0, case.mask):
            raise RuntimeError(f"{case.case_id}: the regenerated anatomy does not match the written brain mask")
        source = case.descriptions["T1w"]
        for modality in ("T2w", "FLAIR"):
            own = case.descriptions[modality]
            typical_truth = truth(config, anatomy, modality, typical_metadata(predictors["GFM (joint)"], modality, own.metadata))
            for label, metadata in targets(own, modality):
                reference = truth(config, anatomy, modality, metadata)
                used.setdefault(label, []).append(metadata.echo_time if modality == "T2w" else metadata.inversion_time)
                per = rows.setdefault(label, {})
                per.setdefault("typical-protocol truth", []).append(common.score(reference, typical_truth, case.mask, modality))
                target = ImageDescription(modality, metadata, own.subject)
                for name, predictor in predictors.items():
                    if name.startswith("GFM task-specific") and not name.endswith(modality):
                        continue
                    prediction = common.predict_raw(predictor, case.images["T1w"], case.geometry, source, target, case.mask)
                    per.setdefault(name, []).append(common.score(reference, prediction, case.mask, modality))
                logger.info("%s %s: %s", case.case_id, label,
                            ", ".join(f"{k} {v[-1]['psnr']:.2f}" for k, v in per.items()))
    return {"test_cases": test_ids, "per_case": rows, "parameters_ms": used,
            "summary": {label: {k: common.summarise(v) for k, v in per.items()} for label, per in rows.items()}}


def markdown(config: common.BenchmarkConfig, result: dict[str, Any]) -> str:
    found = {k for per in result["summary"].values() for k in per}
    columns = [label for label, _ in METHODS] + sorted(k for k in found if k.startswith("GFM task-specific"))
    columns.append("typical-protocol truth")
    lines = [f"T1w -> target on {len(result['test_cases'])} held-out subjects; ground truth = phantom physics with the "
             f"listed parameters (no noise, no bias); models trained {config.budget_text()}. PSNR / SSIM with the papers' "
             "scaling taken inside the brain mask, mean ± sd.", ""]
    for key, title, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
        lines += [f"**{title}**", "", "| target | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for label, per in result["summary"].items():
            values = result["parameters_ms"][label]
            label = f"{label} ({min(values):.0f}-{max(values):.0f} ms)" if "FLAIR" in label else label
            lines.append(f"| {label} | " + " | ".join(common.cell(per.get(c), key, digits) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    config = common.make_config(args)
    common.setup(config, args.verbose)
    started = time.perf_counter()
    common.ensure_dataset(config)
    result = run(config)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(config, result)
    common.write_results(config, "metadata_fidelity", result, text)
    logger.info("metadata fidelity done in %.0f s\n%s", time.perf_counter() - started, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
