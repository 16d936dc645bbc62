"""Patch placement and cropping, with background-heavy patches under-sampled.

A patch is placed by its integer start corner (z, y, x); when the volume is smaller than the patch
along an axis the patch is centred on it and zero-padded. A candidate whose brain-mask fraction is
below ``fraction_min`` is kept only with probability ``keep_probability`` (else redrawn); after
``max_tries`` rejections the patch is centred on a random brain voxel. :func:`lesion_patch_start` centres a
patch on a random lesion voxel instead (the plans' ``training.lesion_oversample`` share of patches).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def crop_padded(volume: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float = 0.0) -> np.ndarray:
    """``volume[start:start + size]`` on the last 3 axes, zero-padded where the window leaves the volume."""
    spatial = volume.shape[-3:]
    out = np.full(volume.shape[:-3] + tuple(int(s) for s in size), pad_value, dtype=volume.dtype)
    src, dst = [], []
    for begin, length, dim in zip(start, size, spatial):
        lo, hi = max(int(begin), 0), min(int(begin) + int(length), dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(begin), hi - int(begin)))
    out[(Ellipsis, *dst)] = volume[(Ellipsis, *src)]
    return out


def random_start(shape: Sequence[int], patch_size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Uniform start inside the volume (or a centred-range start when the volume is smaller)."""
    starts = []
    for dim, size in zip(shape, patch_size):
        lo, hi = min(0, dim - size), max(0, dim - size)
        if dim < size:
            lo = hi = (dim - size) // 2
        starts.append(int(rng.integers(lo, hi + 1)))
    return np.asarray(starts, dtype=np.int64)


def foreground_fraction(mask: np.ndarray, start: Sequence[int], patch_size: Sequence[int]) -> float:
    """Fraction of the patch covered by the mask (padding counts as background)."""
    crop = crop_padded(mask, start, patch_size)
    return float(np.count_nonzero(crop)) / float(crop.size)


def start_around(point: Sequence[int], shape: Sequence[int], patch_size: Sequence[int]) -> np.ndarray:
    """A start that puts ``point`` at the patch centre, clipped to the valid range."""
    starts = []
    for p, dim, size in zip(point, shape, patch_size):
        lo, hi = min(0, dim - size), max(0, dim - size)
        if dim < size:
            lo = hi = (dim - size) // 2
        starts.append(int(np.clip(int(p) - size // 2, lo, hi)))
    return np.asarray(starts, dtype=np.int64)


def choose_patch_start(mask: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator,
                       fraction_min: float = 0.25, keep_probability: float = 0.1, max_tries: int = 10,
                       foreground_points: np.ndarray | None = None) -> np.ndarray:
    """A start whose patch holds at least ``fraction_min`` brain, or a (rarely kept) background patch."""
    shape = mask.shape
    for _ in range(max_tries):
        start = random_start(shape, patch_size, rng)
        if fraction_min <= 0 or foreground_fraction(mask, start, patch_size) >= fraction_min:
            return start
        if rng.random() < keep_probability:
            return start
    if foreground_points is None:
        foreground_points = np.argwhere(np.asarray(mask) > 0)
    if len(foreground_points) == 0:
        return random_start(shape, patch_size, rng)
    point = foreground_points[int(rng.integers(len(foreground_points)))]
    return start_around(point, shape, patch_size)


def lesion_patch_start(lesion_points: np.ndarray, shape: Sequence[int], patch_size: Sequence[int],
                       rng: np.random.Generator) -> np.ndarray | None:
    """A start centring the patch on a random one of ``lesion_points`` (N, 3), or None when there are none:
    lesions fill a few % of the brain, so uniformly placed patches would rarely teach abnormal tissue."""
    if len(lesion_points) == 0:
        return None
    point = lesion_points[int(rng.integers(len(lesion_points)))]
    return start_around(point, shape, patch_size)
