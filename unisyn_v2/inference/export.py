"""Writing predictions: units and grid restored, float32 image plus JSON sidecar, atomically.

A prediction ``<out>/<case>_<target>.nii.gz`` is written with exactly the source image's geometry
(shape, spacing, origin, direction), after :func:`restore_prediction` has undone the target's
normalisation (CT -> HU, PET -> SUV or SUVR, MRI -> normalised units x 1000, see ARCHITECTURE.md),
resampled back to the original spacing and un-cropped with the target's background (air for CT).
The sidecar ``<case>_<target>.json`` (target prompt, unit, source images, model, version, and the
image file's size and sha256) is renamed into place *after* the image. Both are first staged
complete (written to temp files, fsynced, checked: :func:`unisyn_v2.io_utils.stage_file`), so a full
disk leaves the previous outputs as they were. A case counts as finished only when its sidecar exists
and records the image that is there (size and checksum); ``--continue_prediction`` relies on that.
Outputs never replace an input image or the BIDS sidecar an input image is read with.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.dataset.image_io import Geometry, stage_image, verify_image_file
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.inference.inputs import GENERATOR_NAME, InputCase, InputError
from unisyn_v2.io_utils import commit_file, file_sha256, stage_json
from unisyn_v2.metadata.bids import sidecar_path as bids_sidecar_path
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


def image_record(image: Path) -> dict[str, Any]:
    """What the sidecar records of its image, so that a later run can tell the image is the complete one."""
    return {"file": Path(image).name, "bytes": Path(image).stat().st_size, "sha256": file_sha256(image)}


def unfinished_reason(output_folder: Path, case_id: str, target_modality: str) -> str | None:
    """Why a case's outputs do not count as finished (None: finished).

    Finished means both files exist and the sidecar records this image (size and sha256); a sidecar of an
    older version without that record counts when the image itself is whole (gzip trailer, header size).
    """
    image, sidecar = output_paths(output_folder, case_id, target_modality)
    if not image.is_file():
        return f"{image.name} is missing"
    if not sidecar.is_file():
        return f"{sidecar.name} is missing (the run stopped before the case finished)"
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return f"{sidecar.name} is unreadable"
    record = data.get("image") if isinstance(data, dict) else None
    if isinstance(record, dict) and "sha256" in record:
        if record.get("bytes") != image.stat().st_size or record["sha256"] != file_sha256(image):
            return f"{image.name} is not the file its sidecar records (size or sha256 differ: incomplete or replaced)"
        return None
    try:
        verify_image_file(image)
    except OSError as error:
        return f"{image.name}: {error}"
    return None


def is_finished(output_folder: Path, case_id: str, target_modality: str) -> bool:
    """Both files exist and the sidecar (written last) records the image that is there."""
    return unfinished_reason(output_folder, case_id, target_modality) is None


def refuse_outputs_over_inputs(output_folder: Path, target_modality: str, cases: Iterable[InputCase]) -> None:
    """Raise InputError when an output would replace an input file, or its sidecar be read as an input's BIDS sidecar.

    Compared by resolved path (symlinks followed) and by inode, so a link to an input is protected too.
    """
    cases = list(cases)
    protected: dict[Path, str] = {}
    for case in cases:
        for image in case.images:
            protected[_resolved(image.path)] = f"the input image {image.path} (case {case.case_id})"
        if case.brain_mask is not None:
            protected[_resolved(case.brain_mask)] = f"the brain mask {case.brain_mask} of input case {case.case_id}"
    sidecars = {_resolved(bids_sidecar_path(i.path)): i.path for case in cases for i in case.images}
    inodes = {_inode(path): what for path, what in protected.items() if _inode(path) is not None}

    def input_at(path: Path) -> str | None:  # the entry itself (folder links followed) or what a link there points to
        for candidate in (_resolved(path.parent) / path.name, _resolved(path)):
            if candidate in protected:
                return protected[candidate]
        return inodes.get(_inode(path))

    for case in cases:
        image, sidecar = output_paths(output_folder, case.case_id, target_modality)
        what = input_at(image)
        if what is not None:
            raise InputError(f"output {image} would overwrite {what}; unisyn_predict never writes over an input: "
                             "choose another output folder with -o")
        what = input_at(sidecar)
        if what is not None:
            raise InputError(f"output sidecar {sidecar} would overwrite {what}; choose another output folder with -o")
        owner = next((sidecars[c] for c in (_resolved(sidecar.parent) / sidecar.name, _resolved(sidecar)) if c in sidecars), None)
        if owner is not None:
            raise InputError(f"output sidecar {sidecar} is where the input image {owner} keeps its BIDS sidecar (it would "
                             "overwrite it or be read as it); choose another output folder with -o")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def select_cases_to_run(case_ids: Sequence[str], output_folder: Path, target_modality: str,
                        continue_prediction: bool = False, overwrite: bool = False) -> list[str]:
    """The cases to predict under the existing-output policy.

    Default: refuse (before any work) when any output exists. ``continue_prediction``: skip
    finished cases and redo unfinished ones. ``overwrite``: predict everything again.
    """
    if continue_prediction and overwrite:
        raise ValueError("--continue_prediction and --overwrite exclude each other; pick one")
    for case_id in case_ids:
        for path in output_paths(output_folder, case_id, target_modality):
            if path.is_dir():
                raise OutputExistsError(f"output {path} is a folder, not a file; remove it or choose another output "
                                        "folder with -o")
    # lexists: a dangling symlink where an output goes is something there too (replaced only with --overwrite)
    existing = [c for c in case_ids if any(os.path.lexists(p) for p in output_paths(output_folder, c, target_modality))]
    if overwrite or not existing:
        return list(case_ids)
    if continue_prediction:
        finished = set()
        for case_id in existing:
            reason = unfinished_reason(output_folder, case_id, target_modality)
            if reason is None:
                finished.add(case_id)
            else:
                logger.info("--continue_prediction: predicting case %s again: %s", case_id, reason)
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
                  model: dict[str, Any], settings: dict[str, Any], prompt_style: str = "compact") -> dict[str, Any]:
    """The prediction's JSON sidecar (BIDS-derivative style ``GeneratedBy`` marks it as ours); the
    ``unit`` entry is filled by :func:`export_prediction`. Prompts are written as the model read them."""
    version = package_version()
    return {
        "case_id": case_id,
        "target_modality": target.modality,
        "target_prompt": target.prompt(prompt_style),
        "target_metadata": target.metadata.to_dict(),
        "subject": target.subject.to_dict(),
        "unit": None,
        "source_images": [
            {"file": str(path), "modality": d.modality, "prompt": d.prompt(prompt_style)} for path, d in sources
        ],
        "model": model,
        "settings": settings,
        "unisyn_v2_version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "GeneratedBy": [{"Name": GENERATOR_NAME, "Version": version}],
    }


def export_prediction(prediction: np.ndarray, properties: dict[str, Any], plans: Plans, target_modality: str,
                      geometry: Geometry, image_path: Path, sidecar: dict[str, Any],
                      head_mask: np.ndarray | None = None) -> tuple[Path, str]:
    """Restore units, physical range and grid (background outside ``head_mask``), write image then sidecar
    atomically; returns (image path, unit)."""
    array, unit = restore_prediction(prediction, properties, plans, target_modality, head_mask)
    if tuple(array.shape) != tuple(geometry.shape_zyx):
        raise RuntimeError(f"{image_path}: restored shape {array.shape} differs from the source grid {geometry.shape_zyx}")
    return write_prediction_files(array, unit, geometry, image_path, sidecar)


def write_prediction_files(array: np.ndarray, unit: str, geometry: Geometry, image_path: Path,
                           sidecar: dict[str, Any]) -> tuple[Path, str]:
    """Write an output-unit image on ``geometry`` and then its sidecar, both staged complete first (see the module
    docstring); also used for predictions on a new output grid (:mod:`unisyn_v2.inference.output_grid`)."""
    if not np.isfinite(array).all():
        raise RuntimeError(f"{image_path}: the prediction holds non-finite values; the model or its input is broken")
    image_path = Path(image_path)
    sidecar_path = image_path.with_name(image_path.name[: -len(OUTPUT_ENDING)] + ".json")
    # Both files are staged complete before either replaces anything, so a failure (disk full) leaves the
    # previous outputs as they were; the sidecar, renamed last, records the image's size and checksum.
    staged_image = stage_image(image_path, array, geometry, dtype=np.float32)
    try:
        record = {**image_record(staged_image), "file": image_path.name}
        staged_sidecar = stage_json(sidecar_path, {**sidecar, "unit": unit, "image": record})
    except BaseException:
        staged_image.unlink(missing_ok=True)
        raise
    try:
        commit_file(staged_image, image_path)
    except BaseException:
        staged_sidecar.unlink(missing_ok=True)
        raise
    commit_file(staged_sidecar, sidecar_path)  # last: a case is finished exactly when its sidecar records the image
    logger.info("wrote %s (%s)", image_path, unit)
    return image_path, unit
