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
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Optional, Union

import numpy as np

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
