"""Preprocess a whole dataset, in parallel, resuming where an interrupted run stopped.

A case is skipped when its properties file exists with the same signature (raw files + the plan
decisions that shape the arrays); raw data is only read, never modified.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unisyn_v2.dataset.description import DatasetDescription, load_dataset_description
from unisyn_v2.dataset.integrity import lesion_label_problem
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.io_utils import read_json, remove_stale_temp_files
from unisyn_v2.parallel import map_cases
from unisyn_v2.preprocessing.case_preprocessor import preprocess_case
from unisyn_v2.preprocessing.case_store import PreprocessedCase, save_preprocessed_case

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessingJob:
    """What a worker needs (picklable for spawned processes)."""

    description: DatasetDescription
    plans: Plans
    output_folder: Path


def case_signature(description: DatasetDescription, case_id: str, plans: Plans) -> str:
    """Hash of the case's raw files (size, mtime), its description, and the plan's preprocessing decisions."""
    case = description.case(case_id)
    digest = hashlib.sha256()
    masks = [m for m in (case.brain_mask, case.lesion_mask) if m]
    for file in [image.file for image in case.images] + masks:
        stat = description.path_of(file).stat()
        digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(repr(case).encode())
    decisions = {
        "spacing": plans.target_spacing_zyx,
        "normalization": {m: [p.scheme, p.kwargs] for m, p in plans.normalization.items()},
        "resampling": plans.resampling,
    }
    digest.update(json.dumps(decisions, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _is_up_to_date(folder: Path, case_id: str, signature: str, has_lesion: bool = False) -> bool:
    properties = folder / f"{case_id}.json"
    arrays = (f"{case_id}.npy", f"{case_id}_mask.npy", f"{case_id}_head.npy")  # no head mask: from an older version
    arrays += (f"{case_id}_lesion.npy",) if has_lesion else ()
    if not (properties.is_file() and all((folder / name).is_file() for name in arrays)):
        return False
    try:
        return read_json(properties).get("signature") == signature
    except ValueError:
        return False


def _preprocess_one(job: PreprocessingJob, case_id: str) -> str:
    description = job.description
    case = description.case(case_id)
    signature = case_signature(description, case_id, job.plans)
    if _is_up_to_date(job.output_folder, case_id, signature, case.lesion_mask is not None):
        return "skipped"
    images, geometry = [], None
    for image in case.images:
        array, geometry = read_image(description.path_of(image.file))
        images.append(array)
    mask = read_image(description.path_of(case.brain_mask))[0] > 0.5 if case.brain_mask else None
    lesion = _read_lesion_mask(description, case_id, images[0].shape) if case.lesion_mask else None
    arrays = preprocess_case(
        images, [case.describe(image) for image in case.images], geometry, job.plans, mask, case_id,
        files=[image.file for image in case.images], lesion_mask=lesion,
    )
    arrays.properties["signature"] = signature
    save_preprocessed_case(job.output_folder, PreprocessedCase(case_id, arrays.data, arrays.mask, arrays.properties,
                                                               arrays.head, arrays.lesion))
    return "written"


def _read_lesion_mask(description: DatasetDescription, case_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """The case's lesion label map; an unusable one is a one-line error naming the file, case and field."""
    file = str(description.case(case_id).lesion_mask)
    where = f"{description.root / 'dataset.json'}: case {case_id}, file {file}, field lesion_mask"
    array = read_image(description.path_of(file))[0]
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{where}: shape {tuple(array.shape)} differs from the case's images {tuple(shape)} "
                         "(resample it onto their grid)")
    reason = lesion_label_problem(array)
    if reason is not None:
        raise ValueError(f"{where}: {reason}")
    return array.astype(np.uint8)


def preprocess_dataset(raw_root: Path, plans: Plans, preprocessed_root: Path, num_processes: int = 2, progress: bool = True) -> Path:
    """Preprocess every case of ``raw_root`` into ``preprocessed_root/<data_identifier>``."""
    description = load_dataset_description(raw_root)
    identifiers = {config.data_identifier for config in plans.configurations.values()}
    if len(identifiers) != 1:
        raise ValueError(f"plans {plans.plans_name}: configurations must share one data identifier (got {sorted(identifiers)})")
    output = Path(preprocessed_root) / identifiers.pop()
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(Path(preprocessed_root), output)  # left by a killed run
    job = PreprocessingJob(description, plans, output)
    outcomes = map_cases(_preprocess_one, job, [c.case_id for c in description.cases], num_processes, progress, "preprocess")
    logger.info("preprocessed %d case(s), %d already up to date, into %s", outcomes.count("written"), outcomes.count("skipped"), output)
    return output
