"""The dataset fingerprint: per-modality geometry and foreground intensity statistics.

Statistics are per modality, not per channel index, because cases differ in which modalities they
have. Intensities are sampled inside the brain mask (or the head foreground when no mask is given),
reproducibly. The fingerprint records a signature of the raw files and is recomputed only when they
change (or on ``clean=True``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.dataset.description import DATASET_JSON, DatasetDescription, load_dataset_description
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.metadata.classes import metadata_class_key
from unisyn_v2.parallel import map_cases
from unisyn_v2.preprocessing.cropping import foreground_bbox
from unisyn_v2.preprocessing.foreground import case_foreground

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"
SAMPLES_PER_IMAGE = 20_000
SAMPLING_SEED = 1234


def raw_signature(description: DatasetDescription) -> str:
    """Hash of dataset.json and of every referenced file's size and mtime (cheap change detection)."""
    digest = hashlib.sha256((description.root / DATASET_JSON).read_bytes())
    for case in description.cases:
        for file in [image.file for image in case.images] + ([case.brain_mask] if case.brain_mask else []):
            stat = description.path_of(file).stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_case_arrays(description: DatasetDescription, case_id: str) -> tuple[list[np.ndarray], np.ndarray, Any]:
    """Images of a case (file order), its brain mask (given or derived) and the shared geometry."""
    case = description.case(case_id)
    images = []
    geometry = None
    for image in case.images:
        array, geometry = read_image(description.path_of(image.file))
        images.append(array)
    if case.brain_mask:
        mask = read_image(description.path_of(case.brain_mask))[0] > 0.5
    else:
        mask = case_foreground(images, case.modalities)
    return images, mask, geometry


def _analyse_case(description: DatasetDescription, case_id: str) -> dict[str, Any]:
    case = description.case(case_id)
    images, mask, geometry = load_case_arrays(description, case_id)
    head = case_foreground(images, case.modalities) | mask
    bbox = foreground_bbox([head])
    shape_after_crop = [s.stop - s.start for s in bbox]
    rng = np.random.RandomState(SAMPLING_SEED)
    samples: dict[str, list[float]] = {}
    brain = mask if mask.any() else head
    for image, modality in zip(images, case.modalities):
        values = image[brain]
        picked = values[rng.randint(0, values.size, SAMPLES_PER_IMAGE)] if values.size else values
        samples.setdefault(modality, []).extend(picked.astype(np.float32).tolist())  # a modality may repeat
    first_metadata: dict[str, dict[str, Any]] = {}
    for image in case.images:
        first_metadata.setdefault(image.modality, image.metadata.to_dict())
    return {
        "case_id": case_id,
        "shape_zyx": list(geometry.shape_zyx),
        "spacing_zyx": list(geometry.spacing_zyx),
        "shape_after_crop_zyx": shape_after_crop,
        "modalities": case.modalities,
        "classes": [metadata_class_key(case.describe(image)) for image in case.images],
        # the first image of each modality (the file format of one image per modality); every image's
        # metadata goes into the typical protocol through "all_metadata", dropped before writing
        "metadata": first_metadata,
        "all_metadata": [(image.modality, image.metadata.to_dict()) for image in case.images],
        "samples": samples,
    }


def _statistics(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "percentile_50_0": float(np.percentile(values, 50.0)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
    }


def typical_metadata(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric field and the most common text value: what a bare target name means."""
    out: dict[str, Any] = {}
    keys = sorted({k for entry in entries for k in entry})
    for key in keys:
        values = [entry[key] for entry in entries if entry.get(key) is not None]
        if not values:
            continue
        if isinstance(values[0], str):
            out[key] = Counter(values).most_common(1)[0][0]
        elif isinstance(values[0], (list, tuple)):
            out[key] = [float(v) for v in np.median(np.asarray(values, dtype=float), axis=0)]
        else:
            out[key] = float(np.median(np.asarray(values, dtype=float)))
    return out


def extract_fingerprint(raw_root: Path, output_dir: Path, num_processes: int = 2, clean: bool = False, progress: bool = True) -> dict[str, Any]:
    """Compute (or reuse) ``output_dir/dataset_fingerprint.json`` for the raw dataset in ``raw_root``."""
    description = load_dataset_description(raw_root)
    signature = raw_signature(description)
    target = Path(output_dir) / FINGERPRINT_FILE
    if target.is_file() and not clean:
        existing = read_json(target)
        if existing.get("raw_signature") == signature:
            logger.info("fingerprint is up to date: %s", target)
            return existing
        logger.info("raw data changed since the last fingerprint; recomputing")
    case_ids = [case.case_id for case in description.cases]
    results = map_cases(_analyse_case, description, case_ids, num_processes, progress, "fingerprint")
    per_modality_samples: dict[str, list[float]] = {}
    per_modality_metadata: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for modality, values in result.pop("samples").items():
            per_modality_samples.setdefault(modality, []).extend(values)
        for modality, metadata in result.pop("all_metadata"):
            per_modality_metadata.setdefault(modality, []).append(metadata)
    spacings = np.array([r["spacing_zyx"] for r in results])
    shapes = np.array([r["shape_after_crop_zyx"] for r in results])
    fingerprint = {
        "dataset_name": raw_root.name,
        "raw_signature": signature,
        "num_cases": len(results),
        "median_spacing_zyx": np.median(spacings, axis=0).tolist(),
        "median_shape_after_crop_zyx": [int(v) for v in np.median(shapes, axis=0)],
        "modalities": {
            modality: {
                "count": sum(modality in r["modalities"] for r in results),
                "foreground_intensities": _statistics(np.asarray(values, dtype=np.float64)),
                "typical_metadata": typical_metadata(per_modality_metadata.get(modality, [])),
            }
            for modality, values in per_modality_samples.items()
        },
        "metadata_classes": dict(sorted(Counter(c for r in results for c in r["classes"]).items())),
        "cases": {r["case_id"]: {k: v for k, v in r.items() if k != "case_id"} for r in results},
    }
    write_json_atomic(target, fingerprint)
    logger.info("wrote %s (%d cases, modalities: %s)", target, len(results), ", ".join(fingerprint["modalities"]))
    return fingerprint
