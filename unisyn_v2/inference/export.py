"""Writing predictions: units and grid restored, float32 image plus JSON sidecar, atomically.

A prediction ``<out>/<case>_<target>.nii.gz`` is written with exactly the source image's geometry
(shape, spacing, origin, direction), after :func:`restore_prediction` has undone the target's
normalisation (CT -> HU, PET -> SUV or SUVR, MRI -> normalised units x 1000, see ARCHITECTURE.md),
resampled back to the original spacing and un-cropped with the target's background (air for CT).
The sidecar ``<case>_<target>.json`` (target prompt, unit, source images, model, version) is
written *after* the image, both via a temp file and a rename, so a case counts as finished exactly
when its sidecar exists; ``--continue_prediction`` relies on that.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.dataset.image_io import Geometry, write_image
from unisyn_v2.experiment_planning.plans import Plans
from unisyn_v2.inference.inputs import GENERATOR_NAME
from unisyn_v2.io_utils import write_failure, write_json_atomic
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.preprocessing.case_preprocessor import restore_prediction

logger = logging.getLogger(__name__)

OUTPUT_ENDING = ".nii.gz"


class OutputExistsError(FileExistsError):
    """Predictions already exist and neither --overwrite nor --continue_prediction was given."""


def package_version() -> str:
    """Installed unisyn_v2 version (recorded in every sidecar)."""
    try:
        from importlib.metadata import version

        return version("unisyn_v2")
    except Exception:  # noqa: BLE001 - not installed (running from a checkout)
        return "unknown"


def output_paths(output_folder: Path, case_id: str, target_modality: str) -> tuple[Path, Path]:
    """(image, sidecar) paths of one case's prediction: ``<case>_<target>.nii.gz`` and ``.json``."""
    stem = f"{case_id}_{target_modality}"
    return Path(output_folder) / f"{stem}{OUTPUT_ENDING}", Path(output_folder) / f"{stem}.json"


def is_finished(output_folder: Path, case_id: str, target_modality: str) -> bool:
    """A case is finished when both files exist (the sidecar is written last)."""
    image, sidecar = output_paths(output_folder, case_id, target_modality)
    return image.is_file() and sidecar.is_file()


def select_cases_to_run(case_ids: Sequence[str], output_folder: Path, target_modality: str,
                        continue_prediction: bool = False, overwrite: bool = False) -> list[str]:
    """The cases to predict under the existing-output policy.

    Default: refuse (before any work) when any output exists. ``continue_prediction``: skip
    finished cases and redo unfinished ones. ``overwrite``: predict everything again.
    """
    if continue_prediction and overwrite:
        raise ValueError("--continue_prediction and --overwrite exclude each other; pick one")
    existing = [c for c in case_ids if any(p.exists() for p in output_paths(output_folder, c, target_modality))]
    if overwrite or not existing:
        return list(case_ids)
    if continue_prediction:
        finished = {c for c in existing if is_finished(output_folder, c, target_modality)}
        if finished:
            logger.info("--continue_prediction: skipping %d finished case(s): %s", len(finished), ", ".join(sorted(finished)))
        return [c for c in case_ids if c not in finished]
    shown = ", ".join(output_paths(output_folder, c, target_modality)[0].name for c in existing[:5])
    more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
    raise OutputExistsError(
        f"{output_folder}: predictions already exist ({shown}{more}); pass --continue_prediction to skip finished "
        "cases or --overwrite to replace them"
    )


def build_sidecar(case_id: str, target: ImageDescription, sources: Sequence[tuple[Path, ImageDescription]],
                  model: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The prediction's JSON sidecar (BIDS-derivative style ``GeneratedBy`` marks it as ours); the
    ``unit`` entry is filled by :func:`export_prediction`."""
    version = package_version()
    return {
        "case_id": case_id,
        "target_modality": target.modality,
        "target_prompt": target.prompt(),
        "target_metadata": target.metadata.to_dict(),
        "subject": target.subject.to_dict(),
        "unit": None,
        "source_images": [
            {"file": str(path), "modality": d.modality, "prompt": d.prompt()} for path, d in sources
        ],
        "model": model,
        "settings": settings,
        "unisyn_v2_version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "GeneratedBy": [{"Name": GENERATOR_NAME, "Version": version}],
    }


def export_prediction(prediction: np.ndarray, properties: dict[str, Any], plans: Plans, target_modality: str,
                      geometry: Geometry, image_path: Path, sidecar: dict[str, Any]) -> tuple[Path, str]:
    """Restore units and grid, write image then sidecar atomically; returns (image path, unit)."""
    array, unit = restore_prediction(prediction, properties, plans, target_modality)
    if tuple(array.shape) != tuple(geometry.shape_zyx):
        raise RuntimeError(f"{image_path}: restored shape {array.shape} differs from the source grid {geometry.shape_zyx}")
    if not np.isfinite(array).all():
        raise RuntimeError(f"{image_path}: the prediction holds non-finite values; the model or its input is broken")
    sidecar_path = Path(image_path).with_name(Path(image_path).name[: -len(OUTPUT_ENDING)] + ".json")
    try:
        staged = write_json_atomic(sidecar_path.with_name(f".tmp_staged_{sidecar_path.name}"), {**sidecar, "unit": unit})
    except OSError as error:  # name the sidecar, not its staging file
        raise write_failure(sidecar_path, OSError(error.errno, os.strerror(error.errno) if error.errno else str(error))) from error
    try:  # the sidecar is staged first, so a failed write (disk full) leaves the previous outputs as they were
        write_image(image_path, array, geometry, dtype=np.float32)
        os.replace(staged, sidecar_path)  # last: a case is finished exactly when its sidecar exists
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%s)", image_path, unit)
    return Path(image_path), unit
