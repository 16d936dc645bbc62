"""Image similarity metrics for synthesised volumes (PSNR, 3D SSIM, MAE, MSE) and CT bone metrics.

``data_range`` is always an explicit argument: guessing it from the data (as some libraries
do) makes numbers incomparable between cases and papers. PSNR of identical images is
``float('inf')``; the evaluation writer serialises non-finite values as strings ("inf") so
summaries stay valid JSON.

Bone metrics (:func:`bone_metrics`) score what a brain-mask MAE hides in a synthetic CT: whether the skull
is there (Dice of the > 300 HU voxels) and how far its values are off (MAE in HU inside the reference's bone).
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Wang et al. (2004) stability constants.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: Gaussian window sigma used by Wang et al. and skimage's ``gaussian_weights=True``.
SSIM_GAUSSIAN_SIGMA = 1.5


def _prepare(ref: np.ndarray, pred: np.ndarray, mask: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Cast to float64, check shapes, binarise the mask and reject an empty one."""
    ref = np.asarray(ref, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} != prediction shape {pred.shape}")
    if mask is None:
        return ref, pred, None
    mask = np.asarray(mask)
    if mask.shape != ref.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {ref.shape}")
    mask = mask > 0
    if not mask.any():
        raise ValueError("mask is empty; metrics would be undefined")
    return ref, pred, mask


def _check_range(data_range: float) -> float:
    data_range = float(data_range)
    if not data_range > 0 or not math.isfinite(data_range):
        raise ValueError(f"data_range must be a positive finite number, got {data_range}")
    return data_range


def mse(ref: np.ndarray, pred: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean squared error, over the mask voxels when a mask is given."""
    ref, pred, mask = _prepare(ref, pred, mask)
    diff = (ref - pred) if mask is None else (ref[mask] - pred[mask])
    return float(np.mean(diff * diff))


def mae(ref: np.ndarray, pred: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean absolute error, over the mask voxels when a mask is given (SynthRAD style)."""
    ref, pred, mask = _prepare(ref, pred, mask)
    diff = (ref - pred) if mask is None else (ref[mask] - pred[mask])
    return float(np.mean(np.abs(diff)))


def psnr(ref: np.ndarray, pred: np.ndarray, data_range: float, mask: Optional[np.ndarray] = None) -> float:
    """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB; inf for identical images."""
    data_range = _check_range(data_range)
    err = mse(ref, pred, mask)
    if err == 0:
        return float("inf")
    return float(10.0 * math.log10(data_range**2 / err))


def _local_mean(x: np.ndarray, window: int, gaussian: bool) -> np.ndarray:
    if gaussian:
        radius = (window - 1) // 2
        return ndimage.gaussian_filter(x, sigma=SSIM_GAUSSIAN_SIGMA, truncate=radius / SSIM_GAUSSIAN_SIGMA, mode="reflect")
    return ndimage.uniform_filter(x, size=window, mode="reflect")


def ssim3d_map(
    ref: np.ndarray, pred: np.ndarray, data_range: float, window: int = 7, gaussian: bool = False
) -> np.ndarray:
    """Voxel-wise SSIM map (same shape as the inputs), computed with local 3D statistics.

    Uniform window: sample covariance (N / (N - 1)), as skimage's default. Gaussian window
    (sigma 1.5, radius (window - 1) // 2): population covariance, as Wang et al.
    """
    data_range = _check_range(data_range)
    ref, pred, _ = _prepare(ref, pred, None)
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3, got {window}")
    if min(ref.shape) < window:
        raise ValueError(f"every image dimension must be >= window {window}, got shape {ref.shape}")
    n = window**ref.ndim
    cov_norm = 1.0 if gaussian else n / (n - 1.0)
    ux = _local_mean(ref, window, gaussian)
    uy = _local_mean(pred, window, gaussian)
    vx = cov_norm * (_local_mean(ref * ref, window, gaussian) - ux * ux)
    vy = cov_norm * (_local_mean(pred * pred, window, gaussian) - uy * uy)
    vxy = cov_norm * (_local_mean(ref * pred, window, gaussian) - ux * uy)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def ssim3d(
    ref: np.ndarray,
    pred: np.ndarray,
    data_range: float,
    mask: Optional[np.ndarray] = None,
    window: int = 7,
    gaussian: bool = False,
) -> float:
    """Mean 3D SSIM (Wang et al. 2004; K1 0.01, K2 0.03).

    As in skimage (and the SynthRAD evaluation), a border of (window - 1) // 2 voxels is left
    out of the mean because the filter sees reflected data there; with a mask the mean is taken
    over mask voxels inside that cropped region. The defaults (uniform 7^3 window) match
    ``skimage.metrics.structural_similarity`` on 3D input.
    """
    ref, pred, mask = _prepare(ref, pred, mask)
    smap = ssim3d_map(ref, pred, data_range, window=window, gaussian=gaussian)
    pad = (window - 1) // 2
    inner = tuple(slice(pad, s - pad) for s in smap.shape)
    smap = smap[inner]
    if mask is None:
        return float(smap.mean())
    inner_mask = mask[inner]
    if not inner_mask.any():
        raise ValueError("mask has no voxels away from the image border; SSIM undefined")
    return float(smap[inner_mask].mean())


#: Bone threshold in HU: cortical and diploic bone lie above it, soft tissue (brain, muscle, blood) below.
BONE_THRESHOLD_HU = 300.0


def bone_metrics(
    reference_hu: np.ndarray,
    prediction_hu: np.ndarray,
    mask: Optional[np.ndarray] = None,
    threshold_hu: float = BONE_THRESHOLD_HU,
) -> dict[str, float]:
    """Bone agreement of a synthetic CT: ``{"bone_dice": ..., "bone_mae": ...}`` (both images in HU).

    ``bone_dice``: Dice of (reference > threshold) and (prediction > threshold), counted inside ``mask``
    (the head mask; a brain mask holds no bone). ``bone_mae``: mean |reference - prediction| in HU over the
    reference's bone voxels inside ``mask``. When the reference has no bone voxel there: ``bone_mae`` is nan
    (undefined, not 0) and ``bone_dice`` is 1.0 if the prediction has no bone either, else 0.0. An empty
    mask is an error, as for the other metrics.
    """
    ref, pred, mask = _prepare(reference_hu, prediction_hu, mask)
    ref_bone = ref > threshold_hu
    pred_bone = pred > threshold_hu
    if mask is not None:
        ref_bone &= mask
        pred_bone &= mask
    n_ref, n_pred = int(ref_bone.sum()), int(pred_bone.sum())
    if n_ref + n_pred == 0:
        dice = 1.0
    else:
        dice = 2.0 * int(np.count_nonzero(ref_bone & pred_bone)) / (n_ref + n_pred)
    bone_mae = float(np.mean(np.abs(ref[ref_bone] - pred[ref_bone]))) if n_ref else float("nan")
    return {"bone_dice": float(dice), "bone_mae": bone_mae}
