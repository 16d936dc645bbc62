"""Augmentation of (source, target) patches: one spatial transform for both, intensity for the source only.

Spatial (nnU-Net's recipe, milder for a regression target): rotation (p 0.2) and scaling (p 0.2), both
in-plane (y, x) for a 2.5D slab and about every axis in 3D, then left-right mirroring (x, p 0.5). The
transform is sampled once per item and applied through one coordinate array to every channel
(source, target) with linear interpolation, so a target equal to the source stays equal to it.

Intensity (source only, the target is the regression ground truth): Gaussian noise (p 0.1), Gaussian
blur (p 0.2, in-plane for slabs), multiplicative brightness (p 0.15), contrast (p 0.15) and gamma
(p 0.3). Values are in the normalised scale of ARCHITECTURE.md (brain roughly in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from unisyn_v2.training.data.patches import crop_padded


@dataclass(frozen=True)
class AugmentationParams:
    """Probabilities and ranges of the augmentations (defaults as described in the module docstring)."""

    p_rotation: float = 0.2
    max_rotation_deg: float = 15.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.2)
    mirror_axes: tuple[int, ...] = (2,)  # x (left-right)
    p_mirror: float = 0.5
    p_noise: float = 0.1
    noise_std_max: float = 0.05
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)


NO_AUGMENTATION = AugmentationParams(p_rotation=0, p_scale=0, p_mirror=0, p_noise=0, p_blur=0, p_brightness=0,
                                     p_contrast=0, p_gamma=0)


@dataclass(frozen=True)
class SpatialSample:
    """A sampled spatial transform: a 3x3 matrix on (z, y, x) offsets (None = identity) and mirror axes."""

    matrix: np.ndarray | None
    flip_axes: tuple[int, ...]


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def sample_spatial(rng: np.random.Generator, params: AugmentationParams, is_slab: bool) -> SpatialSample:
    """Draw one spatial transform (slab: rotation about z and in-plane scaling only)."""
    matrix = np.eye(3)
    changed = False
    if rng.random() < params.p_rotation:
        limit = math.radians(params.max_rotation_deg)
        for axis in ((0,) if is_slab else (0, 1, 2)):
            matrix = matrix @ _rotation(axis, float(rng.uniform(-limit, limit)))
        changed = True
    if rng.random() < params.p_scale:
        scale = float(rng.uniform(*params.scale_range))
        matrix = matrix @ np.diag([1.0 if is_slab else scale, scale, scale])
        changed = True
    flips = tuple(axis for axis in params.mirror_axes if rng.random() < params.p_mirror)
    return SpatialSample(matrix if changed else None, flips)


def extract_patch(volumes: Sequence[np.ndarray], start: Sequence[int], patch_size: Sequence[int],
                  spatial: SpatialSample | None = None, order: int = 1) -> np.ndarray:
    """(len(volumes), *patch_size) float32: the patch at ``start``, transformed identically for every volume.

    The matrix maps output offsets from the patch centre to input offsets, so the same coordinates
    sample every volume; mirroring is applied afterwards to the stacked channels.
    """
    size = tuple(int(s) for s in patch_size)
    if spatial is None or spatial.matrix is None:
        stack = np.stack([crop_padded(v, start, size) for v in volumes]).astype(np.float32, copy=False)
    else:
        centre = np.asarray(start, dtype=np.float64) + (np.asarray(size) - 1) / 2.0
        grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2.0 for s in size], indexing="ij")).reshape(3, -1)
        coords = centre[:, None] + spatial.matrix @ grid
        lo = np.floor(coords.min(axis=1)).astype(np.int64) - 1
        hi = np.ceil(coords.max(axis=1)).astype(np.int64) + 2
        local = coords - lo[:, None]
        stack = np.empty((len(volumes), *size), dtype=np.float32)
        for i, volume in enumerate(volumes):
            region = crop_padded(volume, lo, hi - lo).astype(np.float32, copy=False)
            stack[i] = ndimage.map_coordinates(region, local, order=order, mode="constant", cval=0.0,
                                               prefilter=False).reshape(size)
    if spatial is not None and spatial.flip_axes:
        stack = np.flip(stack, axis=tuple(a + 1 for a in spatial.flip_axes))
    return np.ascontiguousarray(stack, dtype=np.float32)


def augment_intensity(source: np.ndarray, rng: np.random.Generator, params: AugmentationParams,
                      is_slab: bool) -> np.ndarray:
    """A new array: noise, blur, brightness, contrast and gamma, each with its probability."""
    x = np.array(source, dtype=np.float32, copy=True)
    if rng.random() < params.p_noise:
        x += rng.normal(0.0, rng.uniform(0.0, params.noise_std_max), x.shape).astype(np.float32)
    if rng.random() < params.p_blur:
        sigma = float(rng.uniform(*params.blur_sigma))
        x = ndimage.gaussian_filter(x, (0.0, sigma, sigma) if is_slab else sigma, mode="nearest").astype(np.float32)
    if rng.random() < params.p_brightness:
        x *= np.float32(rng.uniform(*params.brightness_range))
    if rng.random() < params.p_contrast:
        low, high, mean = x.min(), x.max(), x.mean()
        x = np.clip((x - mean) * np.float32(rng.uniform(*params.contrast_range)) + mean, low, high)
    if rng.random() < params.p_gamma:
        low, high = float(x.min()), float(x.max())
        if high > low:
            gamma = float(rng.uniform(*params.gamma_range))
            x = (((x - low) / (high - low)) ** gamma * (high - low) + low).astype(np.float32)
    return x
