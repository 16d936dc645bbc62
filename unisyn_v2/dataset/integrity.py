"""The dataset integrity check: every problem of a raw dataset, found in one run, written nowhere.

The framework needs co-registered images: all images of a case (and its brain mask) must share one
voxel grid. Register them to one reference (the papers use the subject's T1w) before planning.
Beyond readability and geometry, the check finds what would otherwise fail later, far from its cause:
an image that percentile normalisation cannot scale (constant in the brain mask), absurd intensities,
one file listed under two modalities, metadata in the wrong unit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from unisyn_v2.dataset.description import CaseEntry, DatasetDescription, DatasetError, Problem, load_dataset_description
from unisyn_v2.dataset.image_io import Geometry, ImageReadError, count_nonfinite_voxels, read_image
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

logger = logging.getLogger(__name__)

MIN_MODALITIES_PER_CASE = 2
#: Seconds between progress lines while verifying (a 10,000-case dataset takes minutes).
PROGRESS_INTERVAL_S = 10.0
#: No scanner or reconstruction gives intensities beyond this; such voxels are fill values or broken scaling.
MAX_PLAUSIBLE_MAGNITUDE = 1e10
#: The MRI normaliser's default percentiles and its test for coinciding ones (preprocessing.normalization).
MRI_PERCENTILES = (0.5, 99.5)
#: Sidecar conflicts logged one by one before the rest are only counted.
MAX_WARNINGS_SHOWN = 20
#: Lesion label maps are stored as uint8 after preprocessing (<case>_lesion.npy).
MAX_LESION_LABEL = 255


def lesion_label_problem(array: np.ndarray) -> str | None:
    """Why ``array`` cannot be a lesion label map (0 = no lesion, positive integers = lesion classes), or None."""
    array = np.asarray(array)
    if not np.all(np.isfinite(array)):
        return "holds NaN or infinite voxels"
    values = np.unique(array)
    fractional = values[values != np.round(values)]
    if fractional.size:
        return f"must hold integer labels (0 = no lesion), found {float(fractional[0]):g}"
    if values.size and (values[0] < 0 or values[-1] > MAX_LESION_LABEL):
        return f"labels must lie in 0..{MAX_LESION_LABEL} (0 = no lesion), found {float(values[0]):g}..{float(values[-1]):g}"
    return None


def verify_dataset_integrity(root: Path) -> list[Problem]:
    """All problems of the dataset in ``root`` (empty list: the dataset is usable); warnings are logged."""
    try:
        description = load_dataset_description(root)
    except DatasetError as error:
        return list(error.problems)
    for warning in description.warnings[:MAX_WARNINGS_SHOWN]:
        logger.warning("%s", warning)
    if len(description.warnings) > MAX_WARNINGS_SHOWN:
        logger.warning("... and %d more such warning(s)", len(description.warnings) - MAX_WARNINGS_SHOWN)
    problems: list[Problem] = []
    image_owner: dict[Path, str] = {}
    total = len(description.cases)
    start = last = time.monotonic()
    for index, case in enumerate(description.cases, 1):
        problems.extend(_check_case(description, case, image_owner))
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_S:
            logger.info("verified %d/%d cases (%d problem(s) so far, %.0f s)", index, total, len(problems), now - start)
            last = now
    if last != start:
        logger.info("verified %d cases in %.0f s", total, time.monotonic() - start)
    return problems


def _check_case(description: DatasetDescription, case: CaseEntry, image_owner: dict[Path, str]) -> list[Problem]:
    case_id = case.case_id
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
    for image in case.images:
        problems.extend(Problem(message, case=case_id, file=image.file, field=f"metadata.{name}")
                        for name, message in image.metadata.field_problems(image.modality))
    problems.extend(_duplicated_files(description, case, image_owner))
    geometries: list[tuple[str, Geometry]] = []  # images in file order, then the mask
    mask_geometry: Geometry | None = None
    brain: np.ndarray | None = None
    if case.brain_mask:
        mask, geometry, mask_problems = _read_checked(description.path_of(case.brain_mask), case_id, case.brain_mask)
        problems.extend(mask_problems)
        if mask is not None and not mask_problems:
            if not np.all(np.isin(np.unique(mask), (0.0, 1.0))):
                problems.append(Problem("brain mask must hold only 0 and 1", case=case_id, file=case.brain_mask,
                                        field="brain_mask"))
            else:
                brain = mask > 0.5
        mask_geometry = geometry
    for image in case.images:
        array, geometry, image_problems = _read_checked(description.path_of(image.file), case_id, image.file)
        problems.extend(image_problems)
        if array is not None and not image_problems:
            problems.extend(_intensity_problems(array, brain, image.modality, image.metadata.unit, case_id, image.file))
        if geometry is not None:
            geometries.append((image.file, geometry))
    if case.brain_mask and mask_geometry is not None:
        geometries.append((case.brain_mask, mask_geometry))
    if case.lesion_mask:
        lesion_geometry, lesion_problems = _lesion_mask_checked(description, case)
        problems.extend(lesion_problems)
        if lesion_geometry is not None:
            geometries.append((case.lesion_mask, lesion_geometry))
    problems.extend(_geometry_problems(geometries, case_id))
    return problems


def _lesion_mask_checked(description: DatasetDescription, case: CaseEntry) -> tuple[Geometry | None, list[Problem]]:
    """(geometry, problems) of a case's lesion label map; unlike an image it may be all zeros (a healthy case)."""
    file = str(case.lesion_mask)
    path = description.path_of(file)
    if not path.is_file():
        return None, [Problem("lesion mask does not exist; fix the path (relative to the dataset folder) or add the file",
                              case=case.case_id, file=file, field="lesion_mask")]
    try:
        array, geometry = read_image(path)
    except ImageReadError as error:
        return None, [Problem(str(error).split(": ", 1)[-1], case=case.case_id, file=file, field="lesion_mask")]
    reason = lesion_label_problem(array)
    return geometry, [] if reason is None else [Problem(f"lesion mask {reason}", case=case.case_id, file=file,
                                                        field="lesion_mask")]


def _read_checked(path: Path, case_id: str, file: str) -> tuple[np.ndarray | None, Geometry | None, list[Problem]]:
    """(array, geometry, problems) of one file: existence, readability, shape, NaN/inf, all zeros."""
    if not path.is_file():
        return None, None, [Problem("file does not exist; fix the path (relative to the dataset folder) or add the file",
                                    case=case_id, file=file, field="file")]
    try:
        array, geometry = read_image(path)
        nonfinite = count_nonfinite_voxels(path)
    except ImageReadError as error:
        return None, None, [Problem(str(error).split(": ", 1)[-1], case=case_id, file=file, field="file")]
    problems: list[Problem] = []
    if array.size == 0 or min(array.shape) < 2:
        problems.append(Problem(f"image is empty or flat (shape {array.shape})", case=case_id, file=file, field="file"))
    if nonfinite:
        problems.append(
            Problem(f"{nonfinite} voxel(s) are NaN or infinite (replace them, e.g. by 0, or fix the export)",
                    case=case_id, file=file, field="intensities")
        )
    elif not np.any(array):
        problems.append(Problem("image is all zeros; re-export it (an empty volume cannot be normalised)",
                                case=case_id, file=file, field="intensities"))
    return array, geometry, problems


def _intensity_problems(array: np.ndarray, brain: np.ndarray | None, modality: str, unit: str | None, case_id: str,
                        file: str) -> list[Problem]:
    """Absurd magnitudes, and images their family's normaliser cannot fit (so preprocessing would fail)."""
    magnitude = np.abs(array)
    peak = int(np.argmax(magnitude))
    if magnitude.flat[peak] > MAX_PLAUSIBLE_MAGNITUDE:
        z, y, x = np.unravel_index(peak, array.shape)
        count = int(np.count_nonzero(magnitude > MAX_PLAUSIBLE_MAGNITUDE))
        return [Problem(f"{count} voxel(s) beyond +-{MAX_PLAUSIBLE_MAGNITUDE:g}, e.g. {float(array.flat[peak]):g} at voxel "
                        f"(x, y, z) = ({x}, {y}, {z}): no scanner measures that (a fill value or broken scaling?); "
                        "fix the export", case=case_id, file=file, field="intensities")]
    family = get_modality(modality).family
    in_mask = brain is not None and brain.shape == array.shape and bool(brain.any())
    if family is ModalityFamily.MRI:
        voxels = array[brain] if in_mask else array[array != 0]
        low, high = (float(v) for v in np.percentile(voxels, MRI_PERCENTILES))
        if not high - low > 1e-6 * max(1.0, abs(high)):
            where = f"inside the brain mask ({voxels.size} voxel(s))" if in_mask else "over its nonzero voxels"
            check = "the image and the brain mask" if in_mask else "the image"
            return [Problem(f"MRI intensities {where} are constant (p{MRI_PERCENTILES[0]:g} = p{MRI_PERCENTILES[1]:g} = "
                            f"{low:g}): percentile normalisation cannot scale it; check {check}",
                            case=case_id, file=file, field="intensities")]
    elif family is ModalityFamily.PET and str(unit).strip().upper() != "SUV":
        mean = float(array[brain].mean(dtype=np.float64)) if in_mask else float(np.max(array))
        if not mean > 0:
            where = "mean inside the brain mask" if in_mask else "maximum"
            return [Problem(f"PET in unit {unit} needs a positive brain mean to become SUVR, but its {where} is {mean:g}; "
                            "check the image and the brain mask (or give unit SUV)", case=case_id, file=file,
                            field="intensities")]
    return []


def _geometry_problems(geometries: list[tuple[str, Geometry]], case_id: str) -> list[Problem]:
    """Files off the case's grid; the grid most files share is the reference, so one odd file is the one named."""
    groups: list[list[int]] = []
    for index, (_file, geometry) in enumerate(geometries):
        for group in groups:
            if geometries[group[0]][1].matches(geometry):
                group.append(index)
                break
        else:
            groups.append([index])
    if len(groups) < 2:
        return []
    reference = max(groups, key=len)
    ref_file, ref_geometry = geometries[reference[0]]
    return [
        Problem(
            f"geometry differs from {ref_file} ({ref_geometry.mismatch(geometry)}); images of a case must be "
            "co-registered on one voxel grid (resample them to one reference first)",
            case=case_id,
            file=file,
            field="geometry",
        )
        for index, (file, geometry) in enumerate(geometries)
        if index not in reference
    ]


def _duplicated_files(description: DatasetDescription, case: CaseEntry, image_owner: dict[Path, str]) -> list[Problem]:
    """One file (or two with identical bytes) listed under two roles of a case, or an image listed in two cases."""
    entries = [(image.file, image.modality) for image in case.images]
    if case.brain_mask:
        entries.append((case.brain_mask, "brain mask"))
    if case.lesion_mask:
        entries.append((case.lesion_mask, "lesion mask"))
    problems: list[Problem] = []
    seen: dict[Path, tuple[str, str]] = {}
    by_size: dict[int, list[tuple[Path, str, str]]] = {}
    for file, role in entries:
        path = description.path_of(file)  # resolved: links and 'a/../b' spellings meet here
        if not path.is_file():
            continue
        if path in seen:
            other_file, other_role = seen[path]
            problems.append(Problem(f"is the same file as {other_file} (listed as {role} and as {other_role}); give each "
                                    "modality its own image", case=case.case_id, file=file, field="file"))
            continue
        seen[path] = (file, role)
        by_size.setdefault(path.stat().st_size, []).append((path, file, role))
        if role not in ("brain mask", "lesion mask"):  # masks may be shared (one empty lesion map for all)
            owner = image_owner.setdefault(path, case.case_id)
            if owner != case.case_id:
                problems.append(Problem(f"is also an image of case {owner}; every case needs its own images",
                                        case=case.case_id, file=file, field="file"))
    for same_size in (group for group in by_size.values() if len(group) > 1):
        digests: dict[str, tuple[str, str]] = {}
        for path, file, role in same_size:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in digests:
                other_file, other_role = digests[digest]
                problems.append(Problem(f"has the same content as {other_file} (listed as {role} and as {other_role}); "
                                        "give each modality its own image", case=case.case_id, file=file, field="file"))
            else:
                digests[digest] = (file, role)
    return problems
