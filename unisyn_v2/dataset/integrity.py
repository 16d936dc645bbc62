"""The dataset integrity check: every problem of a raw dataset, found in one run, written nowhere.

The framework needs co-registered images: all images of a case (and its brain mask) must share one
voxel grid. Register them to one reference (the papers use the subject's T1w) before planning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from unisyn_v2.dataset.description import DatasetDescription, DatasetError, Problem, load_dataset_description
from unisyn_v2.dataset.image_io import Geometry, ImageReadError, count_nonfinite_voxels, read_image

logger = logging.getLogger(__name__)

MIN_MODALITIES_PER_CASE = 2


def verify_dataset_integrity(root: Path) -> list[Problem]:
    """All problems of the dataset in ``root`` (empty list: the dataset is usable)."""
    try:
        description = load_dataset_description(root)
    except DatasetError as error:
        return list(error.problems)
    problems: list[Problem] = []
    for case in description.cases:
        problems.extend(_check_case(description, case.case_id))
    return problems


def _check_case(description: DatasetDescription, case_id: str) -> list[Problem]:
    case = description.case(case_id)
    problems: list[Problem] = []
    if len(case.images) < MIN_MODALITIES_PER_CASE:
        problems.append(
            Problem(
                f"has {len(case.images)} image(s); synthesis needs at least {MIN_MODALITIES_PER_CASE} modalities per case",
                case=case_id,
                field="images",
            )
        )
    problems.extend(Problem(p, case=case_id, field="subject") for p in case.subject.problems())
    reference: tuple[str, Geometry] | None = None
    files = [(image.file, image.metadata.problems()) for image in case.images]
    if case.brain_mask:
        files.append((case.brain_mask, []))
    for file, metadata_problems in files:
        problems.extend(Problem(p, case=case_id, file=file, field="metadata") for p in metadata_problems)
        geometry, image_problems = _check_image(description.path_of(file), case_id, file, is_mask=file == case.brain_mask)
        problems.extend(image_problems)
        if geometry is None:
            continue
        if reference is None:
            reference = (file, geometry)
        elif (difference := reference[1].mismatch(geometry)) is not None:
            problems.append(
                Problem(
                    f"geometry differs from {reference[0]} ({difference}); images of a case must be co-registered "
                    "on one voxel grid (resample them to one reference first)",
                    case=case_id,
                    file=file,
                    field="geometry",
                )
            )
    return problems


def _check_image(path: Path, case_id: str, file: str, is_mask: bool) -> tuple[Geometry | None, list[Problem]]:
    if not path.is_file():
        return None, [Problem("file does not exist; fix the path (relative to the dataset folder) or add the file",
                              case=case_id, file=file, field="file")]
    try:
        array, geometry = read_image(path)
    except ImageReadError as error:
        return None, [Problem(str(error).split(": ", 1)[-1], case=case_id, file=file, field="file")]
    problems: list[Problem] = []
    if array.size == 0 or min(array.shape) < 2:
        problems.append(Problem(f"image is empty or flat (shape {array.shape})", case=case_id, file=file, field="file"))
    nonfinite = count_nonfinite_voxels(path)
    if nonfinite:
        problems.append(
            Problem(f"{nonfinite} voxel(s) are NaN or infinite (replace them, e.g. by 0, or fix the export)",
                    case=case_id, file=file, field="intensities")
        )
    elif not np.any(array):
        problems.append(Problem("image is all zeros; re-export it (an empty volume cannot be normalised)",
                                case=case_id, file=file, field="intensities"))
    elif is_mask and not np.all(np.isin(np.unique(array), (0.0, 1.0))):
        problems.append(Problem("brain mask must hold only 0 and 1", case=case_id, file=file, field="brain_mask"))
    return geometry, problems
