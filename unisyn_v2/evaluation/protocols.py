"""Named evaluation protocols, so that reported numbers say how they were computed.

- ``papers``: the TUMSyn/UniSyn convention. Each image is scaled to [0, 1] on its own (its
  minimum -> 0, its 99.5th percentile -> 1, clipped), then PSNR and SSIM with data_range 1 and
  MAE on the scaled images. Percentiles use the whole image; a mask only restricts the metrics.
- ``synthrad``: SynthRAD2023 CT convention. Both images clipped to [-1024, 3000] HU; MAE in HU
  and PSNR with data_range 4024 over the mask; SSIM (uniform 7^3, data_range 4024) after setting
  outside-mask voxels to -1024 and shifting by +1024, averaged over the mask. Note: the official
  2023 MAE is computed without clipping; here MAE uses the clipped images, so that one outlier
  voxel (metal, air pockets mislabelled) cannot dominate it.
- ``reference``: one affine map for both images, from the reference alone: its 0.5th percentile -> 0
  and 99.5th -> 1 (inside the mask when one is given), unclipped; PSNR and SSIM with data_range 1 and
  MAE on that scale. Why a third: under ``papers`` each image is scaled by its own minimum, which inside
  the brain is a noise outlier of the reference but a tissue value of a smooth (denoised) prediction,
  so a prediction is shifted by a noise-dependent offset; here a prediction is judged in the
  reference's units, as a regression is (MONAI's PSNR with a fixed max_val does the same).

Before any protocol, :func:`scale_mismatch` tells whether a reference and a prediction are in grossly
different units (one CT in HU and the other not, or robust magnitudes a factor > 5 apart, e.g. an 8-bit
or [0, 1] reference against a prediction on unisyn's x1000 MRI scale): every protocol but ``papers``
would then score the unit, not the synthesis (identity T1w -> FLAIR once scored -8.1 dB that way).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Optional, Union

import numpy as np
from scipy import ndimage

from unisyn_v2.evaluation.metrics import mae, psnr, ssim3d

logger = logging.getLogger(__name__)

SYNTHRAD_HU_MIN = -1024.0
SYNTHRAD_HU_MAX = 3000.0
SYNTHRAD_DATA_RANGE = SYNTHRAD_HU_MAX - SYNTHRAD_HU_MIN  # 4024
PAPERS_UPPER_PERCENTILE = 99.5


class Protocol(StrEnum):
    """Evaluation protocol names as used on the command line and in summary files."""

    PAPERS = "papers"
    SYNTHRAD = "synthrad"
    REFERENCE = "reference"


def papers_scale(image: np.ndarray) -> np.ndarray:
    """Scale one image to [0, 1]: own minimum -> 0, own 99.5th percentile -> 1, clipped."""
    image = np.asarray(image, dtype=np.float64)
    lo = float(image.min())
    hi = float(np.percentile(image, PAPERS_UPPER_PERCENTILE))
    if hi <= lo:
        logger.warning("image is constant up to its 99.5th percentile; scaled to zeros")
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def evaluate_papers(ref: np.ndarray, pred: np.ndarray, mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """PSNR / SSIM / MAE on per-image [0, 1]-scaled volumes (TUMSyn/UniSyn numbers)."""
    ref_s = papers_scale(ref)
    pred_s = papers_scale(pred)
    return {
        "psnr": psnr(ref_s, pred_s, data_range=1.0, mask=mask),
        "ssim": ssim3d(ref_s, pred_s, data_range=1.0, mask=mask),
        "mae": mae(ref_s, pred_s, mask=mask),
    }


def reference_range(ref: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, float]:
    """The reference's robust range: 0.5th and 99.5th percentiles (inside ``mask`` when it has voxels)."""
    ref = np.asarray(ref, dtype=np.float64)
    values = ref[np.asarray(mask) > 0] if mask is not None and np.any(mask) else ref.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [100.0 - PAPERS_UPPER_PERCENTILE, PAPERS_UPPER_PERCENTILE]))
    if not hi > lo:
        logger.warning("reference is constant between its 0.5th and 99.5th percentiles; using a range of 1")
        hi = lo + 1.0
    return lo, hi


def evaluate_reference_scaled(ref: np.ndarray, pred: np.ndarray, mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """PSNR / SSIM / MAE with both images mapped by the reference's robust range (one affine map)."""
    lo, hi = reference_range(ref, mask)
    ref_s = (np.asarray(ref, dtype=np.float64) - lo) / (hi - lo)
    pred_s = (np.asarray(pred, dtype=np.float64) - lo) / (hi - lo)
    return {
        "psnr": psnr(ref_s, pred_s, data_range=1.0, mask=mask),
        "ssim": ssim3d(ref_s, pred_s, data_range=1.0, mask=mask),
        "mae": mae(ref_s, pred_s, mask=mask),
    }


def lesion_psnr(ref: np.ndarray, pred: np.ndarray, brain: np.ndarray, lesion: np.ndarray) -> dict[str, float]:
    """``lesion_psnr`` (inside the lesions), ``normal_psnr`` (the brain minus the lesions dilated by one voxel, so
    partial-volume borders count for neither) and ``lesion_gap_db`` (normal - lesion), both images on the reference's
    brain range as the ``reference`` protocol maps them: how much worse abnormal tissue is synthesised (issue 17)."""
    brain = np.asarray(brain) > 0
    inside = (np.asarray(lesion) > 0) & brain
    normal = brain & ~ndimage.binary_dilation(np.asarray(lesion) > 0)
    if not inside.any() or not normal.any():
        return {}
    lo, hi = reference_range(ref, brain)
    ref_s = (np.asarray(ref, dtype=np.float64) - lo) / (hi - lo)
    pred_s = (np.asarray(pred, dtype=np.float64) - lo) / (hi - lo)
    in_lesion, in_normal = psnr(ref_s, pred_s, 1.0, mask=inside), psnr(ref_s, pred_s, 1.0, mask=normal)
    return {"lesion_psnr": in_lesion, "normal_psnr": in_normal, "lesion_gap_db": in_normal - in_lesion}


def synthrad_clip(image: np.ndarray) -> np.ndarray:
    """Clip a CT volume to the SynthRAD2023 window [-1024, 3000] HU."""
    return np.clip(np.asarray(image, dtype=np.float64), SYNTHRAD_HU_MIN, SYNTHRAD_HU_MAX)


def evaluate_synthrad(ref: np.ndarray, pred: np.ndarray, mask: Optional[np.ndarray] = None) -> dict[str, float]:
    """MAE (HU), PSNR and SSIM following SynthRAD2023's CT image metrics."""
    ref_c = synthrad_clip(ref)
    pred_c = synthrad_clip(pred)
    result = {
        "mae": mae(ref_c, pred_c, mask=mask),
        "psnr": psnr(ref_c, pred_c, data_range=SYNTHRAD_DATA_RANGE, mask=mask),
    }
    if mask is not None:
        outside = np.asarray(mask) <= 0
        ref_c = np.where(outside, SYNTHRAD_HU_MIN, ref_c)
        pred_c = np.where(outside, SYNTHRAD_HU_MIN, pred_c)
    result["ssim"] = ssim3d(
        ref_c - SYNTHRAD_HU_MIN, pred_c - SYNTHRAD_HU_MIN, data_range=SYNTHRAD_DATA_RANGE, mask=mask
    )
    return {"psnr": result["psnr"], "ssim": result["ssim"], "mae": result["mae"]}


#: CT air: a share of voxels in this band (HU) marks an image as CT in HU.
HU_AIR_BAND = (-1100.0, -900.0)
HU_AIR_MIN_FRACTION = 0.005
#: CT inference from values alone: this share of voxels below -500 HU and some above 300 HU (bone).
CT_AIR_HU = -500.0
CT_BONE_HU = 300.0
CT_MIN_AIR_FRACTION = 0.01
#: Robust magnitudes further apart than this factor mean different units or scales, not a poor synthesis.
SCALE_MISMATCH_FACTOR = 5.0
#: An image stored on a [0, 1] or 8-bit scale cannot hold values above its cap: the other image's 99th
#: percentile above this multiple of that cap is a unit difference even below SCALE_MISMATCH_FACTOR
#: (an 8-bit reference with p99 230 against unisyn's x1000 MRI scale is only a factor ~4 apart).
STORAGE_CAP_MULTIPLE = 2.0


def looks_like_hu(image: np.ndarray) -> bool:
    """True when at least 0.5 % of the voxels sit in the air band -1100..-900 (a CT in Hounsfield units)."""
    image = np.asarray(image)
    band = (image >= HU_AIR_BAND[0]) & (image <= HU_AIR_BAND[1])
    return bool(band.mean() >= HU_AIR_MIN_FRACTION)


def infer_modality(reference: np.ndarray) -> str:
    """``"CT"`` when >= 1 % of the reference is below -500 (air) and some of it above 300 (bone); else ``"MRI-like"``."""
    reference = np.asarray(reference)
    is_ct = (reference < CT_AIR_HU).mean() >= CT_MIN_AIR_FRACTION and bool((reference > CT_BONE_HU).any())
    return "CT" if is_ct else "MRI-like"


def _storage_cap(image: np.ndarray) -> Optional[float]:
    """1.0 for an image in [0, 1], 255.0 for an integer-valued image in 0..255 (8-bit storage), else None."""
    lo, hi = float(np.min(image)), float(np.max(image))
    if lo < 0.0:
        return None
    if hi <= 1.0:
        return 1.0
    if hi <= 255.0 and np.array_equal(image, np.round(image)):
        return 255.0
    return None


def _describe_scale(image: np.ndarray) -> str:
    """A hint at the unit an image seems to be in, for the mismatch message ("" when nothing stands out)."""
    if looks_like_hu(image):
        return " (CT in HU, air at -1000)"
    cap = _storage_cap(image)
    if cap == 1.0:
        return " ([0, 1] scale)"
    if cap == 255.0:
        return " (8-bit-like 0..255 scale)"
    return ""


def _magnitude(values: np.ndarray) -> tuple[float, float]:
    """(99th percentile, robust magnitude max(|1st percentile|, |99th percentile|)) of a set of values."""
    p1, p99 = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    return p99, max(abs(p1), abs(p99))


def scale_mismatch(
    ref: np.ndarray, pred: np.ndarray, region: Optional[np.ndarray] = None,
    ref_name: str = "reference", pred_name: str = "prediction",
) -> Optional[str]:
    """A one-line diagnosis when reference and prediction are grossly in different units, else None.

    Gross means: one looks like CT in HU (:func:`looks_like_hu`, on the whole image) and the other does not;
    or one is stored on a [0, 1] or integer 0..255 scale and the other's 99th percentile inside ``region``
    (the head) is above twice that cap; or their robust magnitudes inside ``region`` (max of |1st| and |99th|
    percentile) are a factor > 5 apart. Two HU
    images are never flagged: a synthetic CT without bone has a far lower 99th percentile than the
    reference, which is an error of the synthesis, not of units. A prediction that is zero inside the
    region has no scale to compare and is not flagged either.
    """
    ref = np.asarray(ref, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ref_hu, pred_hu = looks_like_hu(ref), looks_like_hu(pred)
    inside = np.asarray(region) > 0 if region is not None and np.any(region) else np.ones(ref.shape, dtype=bool)
    ref_p99, ref_mag = _magnitude(ref[inside])
    pred_p99, pred_mag = _magnitude(pred[inside])
    ref_text = f"reference {ref_name} p99 = {ref_p99:.4g}{_describe_scale(ref)}"
    pred_text = f"prediction {pred_name} p99 = {pred_p99:.4g}{_describe_scale(pred)}"
    if ref_hu != pred_hu:
        which = "reference" if ref_hu else "prediction"
        return f"{ref_text} vs {pred_text}: only the {which} looks like CT in HU (air at -1000)"
    if ref_hu or min(ref_mag, pred_mag) <= 0.0:
        return None
    factor = max(ref_mag, pred_mag) / min(ref_mag, pred_mag)
    if factor > SCALE_MISMATCH_FACTOR:
        return f"{ref_text} vs {pred_text}: intensity scales differ by a factor {factor:.3g} (> {SCALE_MISMATCH_FACTOR:g})"
    for cap, other_p99, name in ((_storage_cap(ref), pred_p99, "reference"), (_storage_cap(pred), ref_p99, "prediction")):
        if cap is not None and other_p99 > STORAGE_CAP_MULTIPLE * cap:
            return (f"{ref_text} vs {pred_text}: the {name} is stored on a 0..{cap:g} scale and the other "
                    f"image's values lie far above it")
    return None


def evaluate_pair(
    ref: np.ndarray, pred: np.ndarray, protocol: Union[Protocol, str], mask: Optional[np.ndarray] = None
) -> dict[str, Union[float, str]]:
    """Metrics of one (reference, prediction) pair under a named protocol.

    Returns ``{"protocol": name, "psnr": ..., "ssim": ..., "mae": ...}``.
    """
    protocol = Protocol(protocol)
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} != prediction shape {pred.shape}")
    if protocol is Protocol.PAPERS:
        values = evaluate_papers(ref, pred, mask)
    elif protocol is Protocol.REFERENCE:
        values = evaluate_reference_scaled(ref, pred, mask)
    else:
        values = evaluate_synthrad(ref, pred, mask)
    return {"protocol": protocol.value, **values}
