"""Evaluate a folder of predictions against a folder of references under a named protocol.

File pairing: a reference ``<case>.nii.gz`` matches a prediction with the same file name, or
one whose name (without extension) starts with ``<case>_`` (the predictor writes
``<case>_<target>.nii.gz``). Each prediction is assigned to the longest matching reference
stem, so ``sub1`` never claims ``sub10_ct``. Masks are matched to references the same way.
References without prediction are listed in the summary (``missing_predictions``) and skipped
with a warning; a reference with several candidate predictions is an error.

Outputs: ``summary.json`` (protocol, per-case metrics, mean/std) and ``summary.csv`` (one row
per case), both written atomically. Non-finite values (PSNR of identical images is inf) are
written as the strings "inf", "-inf" or "nan" so the JSON stays standard; means and standard
deviations are over all cases, so one infinite PSNR makes the PSNR mean "inf".
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.evaluation.protocols import Protocol, evaluate_pair
from unisyn_v2.io_utils import expect_size, replace_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
METRIC_NAMES = ("psnr", "ssim", "mae")
PathLike = Union[str, os.PathLike]


def split_extension(name: str) -> tuple[str, str]:
    """Split a file name into (stem, extension) for the supported image extensions."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    return name, ""


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and split_extension(p.name)[1])


def match_files(ref_files: list[Path], candidates: list[Path]) -> tuple[dict[str, Path], list[Path]]:
    """Map each reference file name to its candidate file; also return unmatched candidates."""
    stems = {split_extension(r.name)[0]: r for r in ref_files}
    by_name = {r.name for r in ref_files}
    assigned: dict[str, list[Path]] = {r.name: [] for r in ref_files}
    unmatched: list[Path] = []
    for cand in candidates:
        if cand.name in by_name:
            assigned[cand.name].append(cand)
            continue
        cand_stem = split_extension(cand.name)[0]
        owners = [s for s in stems if cand_stem.startswith(s + "_")]
        if not owners:
            unmatched.append(cand)
            continue
        assigned[stems[max(owners, key=len)].name].append(cand)
    result: dict[str, Path] = {}
    for ref_name, cands in assigned.items():
        exact = [c for c in cands if c.name == ref_name]
        chosen = exact or cands
        if len(chosen) > 1:
            raise ValueError(f"reference {ref_name} matches several files: {sorted(c.name for c in chosen)}")
        if chosen:
            result[ref_name] = chosen[0]
    return result, unmatched


MASK_SUFFIXES = ("_brainmask", "_mask")


def match_masks(ref_files: list[Path], mask_files: list[Path]) -> dict[str, Path]:
    """Map reference names to masks: ``<case>[_mask|_brainmask]`` serves every ``<case>_*`` reference."""
    keys: dict[str, Path] = {}
    for mask in mask_files:
        stem = split_extension(mask.name)[0]
        for suffix in MASK_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        keys[stem] = mask
    result: dict[str, Path] = {}
    for ref in ref_files:
        ref_stem = split_extension(ref.name)[0]
        owners = [k for k in keys if ref_stem == k or ref_stem.startswith(k + "_")]
        if owners:
            result[ref.name] = keys[max(owners, key=len)]
    return result


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    array, geometry = read_image(path)  # errors name the file; truncated NIfTI files are refused, not zero-filled
    return array, geometry.spacing_xyz


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by strings ("inf", "-inf", "nan") so json.dumps stays standard."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write text via a checked, fsynced temporary file in the same folder and os.replace (no torn files)."""
    data = text.encode("utf-8")

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)

    replace_atomic(Path(path), write, verify=expect_size(len(data)), needed=len(data))


def _aggregate(cases: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for name in METRIC_NAMES:
        values = np.array([c[name] for c in cases], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            mean[name] = float(np.mean(values))
            std[name] = float(np.std(values))
    return mean, std


def _csv_text(cases: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = ["case", "reference", "prediction", *METRIC_NAMES]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: (repr(case[k]) if isinstance(case[k], float) else case[k]) for k in fields})
    return buffer.getvalue()


def evaluate_folders(
    ref_dir: PathLike,
    pred_dir: PathLike,
    protocol: Union[Protocol, str],
    mask_dir: Optional[PathLike] = None,
    output_file: Optional[PathLike] = None,
) -> dict[str, Any]:
    """Evaluate every prediction against its reference and write summary.json / summary.csv.

    ``output_file`` is the JSON path (default ``<pred_dir>/summary.json``); the CSV is written
    next to it with the ``.csv`` suffix. Returns the summary dict (with raw floats, inf included).
    """
    protocol = Protocol(protocol)
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    for folder in (ref_dir, pred_dir) + ((Path(mask_dir),) if mask_dir is not None else ()):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    refs = _list_images(ref_dir)
    if not refs:
        raise ValueError(f"no reference images ({', '.join(IMAGE_EXTENSIONS)}) in {ref_dir}")
    preds, unmatched = match_files(refs, _list_images(pred_dir))
    for p in unmatched:
        logger.warning("prediction %s matches no reference in %s; ignored", p.name, ref_dir)
    missing = [r.name for r in refs if r.name not in preds]
    for name in missing:
        logger.warning("no prediction for reference %s; case skipped", name)
    if not preds:
        raise ValueError(f"no prediction in {pred_dir} matches a reference in {ref_dir}")
    masks: dict[str, Path] = {}
    if mask_dir is not None:
        masks = match_masks(refs, _list_images(Path(mask_dir)))
        lacking = [name for name in preds if name not in masks]
        if lacking:
            raise ValueError(f"no mask in {mask_dir} for references {lacking}")

    cases: list[dict[str, Any]] = []
    for ref_path in refs:
        if ref_path.name not in preds:
            continue
        pred_path = preds[ref_path.name]
        ref, ref_spacing = _read(ref_path)
        pred, pred_spacing = _read(pred_path)
        if ref.shape != pred.shape:
            raise ValueError(f"shape mismatch: reference {ref_path} {ref.shape} vs prediction {pred_path} {pred.shape}")
        if not np.allclose(ref_spacing, pred_spacing, rtol=1e-3, atol=1e-4):
            logger.warning("spacing differs: %s %s vs %s %s", ref_path.name, ref_spacing, pred_path.name, pred_spacing)
        mask = None
        if ref_path.name in masks:
            mask, _ = _read(masks[ref_path.name])
            if mask.shape != ref.shape:
                raise ValueError(f"shape mismatch: reference {ref_path} {ref.shape} vs mask {masks[ref_path.name]} {mask.shape}")
        values = evaluate_pair(ref, pred, protocol, mask=mask)
        case = {"case": split_extension(ref_path.name)[0], "reference": ref_path.name, "prediction": pred_path.name}
        case.update({k: float(values[k]) for k in METRIC_NAMES})
        cases.append(case)
        logger.info("%s: %s", case["case"], ", ".join(f"{k}={case[k]:.4f}" for k in METRIC_NAMES))

    mean, std = _aggregate(cases)
    summary: dict[str, Any] = {
        "protocol": protocol.value,
        "reference_dir": str(ref_dir),
        "prediction_dir": str(pred_dir),
        "mask_dir": str(mask_dir) if mask_dir is not None else None,
        "n_cases": len(cases),
        "mean": mean,
        "std": std,
        "per_case": cases,
        "missing_predictions": missing,
        "unmatched_predictions": [p.name for p in unmatched],
    }
    json_path = Path(output_file) if output_file is not None else pred_dir / "summary.json"
    atomic_write_text(json_path, json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    atomic_write_text(json_path.with_suffix(".csv"), _csv_text(cases))
    logger.info("wrote %s and %s (%d cases, protocol %s)", json_path, json_path.with_suffix(".csv"), len(cases), protocol.value)
    return summary
