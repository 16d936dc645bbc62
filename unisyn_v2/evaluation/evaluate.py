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

Regions (issue 17: a brain-mask MAE hid a synthetic CT without skull). Per case and in ``mean``/``std``:

- ``psnr``, ``ssim``, ``mae``: as before this schema, inside the ``mask_dir`` mask (brain) when one is
  given, else over the whole image; except under ``synthrad`` without ``mask_dir``, which scores the head
  mask (SynthRAD scores over the body mask; the whole image would count air). ``summary["region"]`` says
  which: ``"brain"``, ``"head"`` or ``"image"``.
- ``head_psnr``, ``head_ssim``, ``head_mae``: always, inside the head mask: from ``head_mask_dir`` (matched as
  the brain masks are) or derived from the reference with
  :func:`unisyn_v2.preprocessing.foreground.case_foreground` (threshold, largest component, hole filling;
  CT > -500 HU). ``summary["head_mask"]`` is ``"given"`` or ``"derived"``.
- ``bone_dice``, ``bone_mae``: for CT references (``synthrad`` or modality CT), in HU inside the head mask
  (:func:`unisyn_v2.evaluation.metrics.bone_metrics`, threshold 300 HU). ``bone_mae`` is nan for a case
  whose reference has no bone; its mean skips such cases.
- ``lesion_psnr``, ``normal_psnr``, ``lesion_gap_db``: with ``lesion_mask_dir`` (label maps matched as the brain
  masks are, any label > 0 a lesion), for cases whose map has lesions, both images on the reference's range in
  the brain (else head) mask (:func:`unisyn_v2.evaluation.protocols.lesion_psnr`); means over those cases.

The modality (which threshold derives the head, whether bone is scored) is ``modality`` when given, else
inferred per case from the reference: ``"CT"`` when >= 1 % of it is below -500 and some of it above 300,
else ``"MRI-like"`` (MRI and PET share one foreground rule). It is recorded per case.

Units: before scoring, :func:`unisyn_v2.evaluation.protocols.scale_mismatch` compares the two images (CT in
HU or not; robust magnitude inside the head); a gross difference is a one-line ``ValueError`` naming both
files, or a warning with ``allow_scale_mismatch``. Under ``papers`` it is only a warning: that protocol maps
each image to [0, 1] on its own, so a gain or unit difference does not change its numbers.
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
from unisyn_v2.evaluation.metrics import bone_metrics
from unisyn_v2.evaluation.protocols import Protocol, evaluate_pair, infer_modality, lesion_psnr, scale_mismatch
from unisyn_v2.io_utils import expect_size, replace_atomic
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.preprocessing.foreground import case_foreground

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
METRIC_NAMES = ("psnr", "ssim", "mae")
HEAD_METRIC_NAMES = ("head_psnr", "head_ssim", "head_mae")
BONE_METRIC_NAMES = ("bone_dice", "bone_mae")
LESION_METRIC_NAMES = ("lesion_psnr", "normal_psnr", "lesion_gap_db")
SCALE_MISMATCH_FIX = ("rescale one to the other's unit (or give the reference in the unit the predictor writes: "
                      "HU for CT, SUV for PET, normalised x1000 for MRI), or pass --allow_scale_mismatch to score anyway")
#: Modality name given to the foreground rule for a reference inferred to be MRI-like (MRI and PET share it).
MRI_LIKE_FOREGROUND_MODALITY = "T1w"
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
    """Mean and std per metric over the cases that have it; bone_mae skips cases without reference bone (nan)."""
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for name in (*METRIC_NAMES, *HEAD_METRIC_NAMES, *BONE_METRIC_NAMES, *LESION_METRIC_NAMES):
        values = np.array([c[name] for c in cases if name in c], dtype=np.float64)
        if name == "bone_mae":
            values = values[~np.isnan(values)]
        if values.size == 0:
            if any(name in c for c in cases):
                mean[name] = std[name] = float("nan")
            continue
        with np.errstate(invalid="ignore"):
            mean[name] = float(np.mean(values))
            std[name] = float(np.std(values))
    return mean, std


def _csv_text(cases: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    metrics = [n for n in (*METRIC_NAMES, *HEAD_METRIC_NAMES, *BONE_METRIC_NAMES, *LESION_METRIC_NAMES)
               if any(n in c for c in cases)]
    fields = ["case", "reference", "prediction", *metrics, "modality"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: (repr(case[k]) if isinstance(case[k], float) else case[k]) if k in case else "" for k in fields})
    return buffer.getvalue()


def _check_mask_folders(preds: dict[str, Path], refs: list[Path], mask_dir: Optional[PathLike], what: str) -> dict[str, Path]:
    """Masks for every evaluated reference, or a one-line error listing those without."""
    if mask_dir is None:
        return {}
    masks = match_masks(refs, _list_images(Path(mask_dir)))
    lacking = [name for name in preds if name not in masks]
    if lacking:
        raise ValueError(f"no {what} in {mask_dir} for references {lacking}")
    return masks


def _read_mask(path: Path, ref_path: Path, shape: tuple[int, ...]) -> np.ndarray:
    mask, _ = _read(path)
    if mask.shape != shape:
        raise ValueError(f"shape mismatch: reference {ref_path} {shape} vs mask {path} {mask.shape}")
    return mask > 0


def head_mask_of(reference: np.ndarray, modality: str) -> np.ndarray:
    """The head of a reference image: :func:`case_foreground` with CT's or MRI/PET's threshold."""
    name = MRI_LIKE_FOREGROUND_MODALITY if modality == "MRI-like" else modality
    return case_foreground([np.asarray(reference, dtype=np.float64)], [name])


def _is_ct(modality: str) -> bool:
    return modality != "MRI-like" and get_modality(modality).family is ModalityFamily.CT


def evaluate_folders(
    ref_dir: PathLike,
    pred_dir: PathLike,
    protocol: Union[Protocol, str],
    mask_dir: Optional[PathLike] = None,
    output_file: Optional[PathLike] = None,
    head_mask_dir: Optional[PathLike] = None,
    modality: Optional[str] = None,
    allow_scale_mismatch: bool = False,
    lesion_mask_dir: Optional[PathLike] = None,
) -> dict[str, Any]:
    """Evaluate every prediction against its reference and write summary.json / summary.csv.

    ``mask_dir`` holds brain masks, ``head_mask_dir`` head masks (derived from the reference when absent);
    ``modality`` names the references' modality (inferred per case when absent); see the module docstring
    for the metrics and regions. ``output_file`` is the JSON path (default ``<pred_dir>/summary.json``); the
    CSV is written next to it with the ``.csv`` suffix. Returns the summary dict (raw floats, inf included).
    """
    protocol = Protocol(protocol)
    if modality is not None:
        modality = get_modality(modality).name  # unknown names fail here, listing the known ones
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    optional = tuple(Path(d) for d in (mask_dir, head_mask_dir, lesion_mask_dir) if d is not None)
    for folder in (ref_dir, pred_dir) + optional:
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
    masks = _check_mask_folders(preds, refs, mask_dir, "mask")
    head_masks = _check_mask_folders(preds, refs, head_mask_dir, "head mask")
    lesion_masks = _check_mask_folders(preds, refs, lesion_mask_dir, "lesion mask")
    region = "brain" if mask_dir is not None else ("head" if protocol is Protocol.SYNTHRAD else "image")

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
        case_modality = modality or infer_modality(ref)
        if ref_path.name in head_masks:
            head = _read_mask(head_masks[ref_path.name], ref_path, ref.shape)
        else:
            head = head_mask_of(ref, case_modality)
        if not head.any():
            raise ValueError(f"reference {ref_path}: the head mask derived from it ({case_modality} threshold) is empty; "
                             "pass head masks (--head_mask) or the right --modality")
        problem = scale_mismatch(ref, pred, head, ref_path.name, pred_path.name)
        if problem is not None:
            if protocol is Protocol.PAPERS:
                logger.warning("%s; scored: the papers protocol scales each image to [0, 1] on its own, "
                               "the reference and synthrad protocols would refuse this pair", problem)
            elif not allow_scale_mismatch:
                raise ValueError(f"{problem}; {SCALE_MISMATCH_FIX}")
            else:
                logger.warning("%s; scored anyway (allow_scale_mismatch)", problem)
        brain = _read_mask(masks[ref_path.name], ref_path, ref.shape) if ref_path.name in masks else None
        head_values = evaluate_pair(ref, pred, protocol, mask=head)
        if region == "brain":
            values = evaluate_pair(ref, pred, protocol, mask=brain)
        elif region == "head":
            values = head_values
        else:
            values = evaluate_pair(ref, pred, protocol, mask=None)
        case = {"case": split_extension(ref_path.name)[0], "reference": ref_path.name, "prediction": pred_path.name}
        case.update({k: float(values[k]) for k in METRIC_NAMES})
        case.update({f"head_{k}": float(head_values[k]) for k in METRIC_NAMES})
        if protocol is Protocol.SYNTHRAD or _is_ct(case_modality):
            case.update(bone_metrics(ref, pred, mask=head))
        if ref_path.name in lesion_masks:
            lesion = _read_mask(lesion_masks[ref_path.name], ref_path, ref.shape)
            case.update(lesion_psnr(ref, pred, brain if brain is not None else head, lesion))
        case["modality"] = case_modality
        cases.append(case)
        reported = [k for k in (*METRIC_NAMES, *HEAD_METRIC_NAMES, *BONE_METRIC_NAMES, *LESION_METRIC_NAMES) if k in case]
        logger.info("%s: %s", case["case"], ", ".join(f"{k}={case[k]:.4f}" for k in reported))

    mean, std = _aggregate(cases)
    summary: dict[str, Any] = {
        "protocol": protocol.value,
        "reference_dir": str(ref_dir),
        "prediction_dir": str(pred_dir),
        "mask_dir": str(mask_dir) if mask_dir is not None else None,
        "region": region,
        "head_mask": "given" if head_mask_dir is not None else "derived",
        "head_mask_dir": str(head_mask_dir) if head_mask_dir is not None else None,
        "lesion_mask_dir": str(lesion_mask_dir) if lesion_mask_dir is not None else None,
        "modality": modality if modality is not None else "inferred",
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
