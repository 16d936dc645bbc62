"""Seam measure for slab-wise (2.5D) synthesis: is there a step along z where one slab hands over to the next?

A 2.5D model predicts k slices at a time, each from its own output channel, so a blend that takes
neighbouring slices from different slabs (or different positions in a slab) leaves a staircase in
coronal and sagittal views (issue 17). The measure compares the mean absolute inter-slice difference
|v[z + 1] - v[z]| across *boundary* pairs (where the slab that dominates the blend changes) with the
same mean across the *inside* pairs, only where the anatomy is smooth: inside the mask and where the
guide image (the source, not the prediction, so a blurred prediction cannot game it) has a small local
gradient. Real anatomy varies alike at both kinds of pair, so

    seam ratio = max(boundary / inside, inside / boundary),   1.0 = no seam.

Both directions count: a slab whose positions carry different offsets can put its step between two
slices of the same slab as well as at the border. A blend that places a slab at every slice (the
predictor's default for 2.5D models) has no preferred positions, so measuring it at the positions of
the old slab grid is a fair before/after comparison. Pure numpy: the caller supplies the slab starts
and the blending weights along z (``unisyn_v2.models.sliding_window`` computes both).

Blind spot: a pattern that alternates at every pair alike is not seen. With 4-slice slabs at a 2-slice
step the old blend takes slices alternately from slab positions 1 and 2, so a fixed offset between those
two positions (the same in every slab) zigzags by the same amount across boundary and inside pairs and
the ratio stays near 1; a slab-to-slab difference (each forward pass off differently) is what it sees.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Pairs whose guide gradient is below this quantile (inside the mask) count as smooth.
DEFAULT_SMOOTH_QUANTILE = 0.5


@dataclass(frozen=True)
class SeamReport:
    """The seam ratio and what it is made of (means of |inter-slice difference| and voxel counts)."""

    ratio: float
    boundary_mean: float
    inside_mean: float
    boundary_voxels: int
    inside_voxels: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return asdict(self)


def dominant_slab(n_slices: int, starts: Sequence[int], slab_weights: Sequence[float]) -> np.ndarray:
    """Index (into ``starts``) of the slab with the largest blending weight at every slice (-1: none)."""
    weights = np.asarray(slab_weights, dtype=np.float64)
    k = len(weights)
    best = np.full(n_slices, -np.inf)
    owner = np.full(n_slices, -1, dtype=np.int64)
    for index, start in enumerate(starts):
        lo, hi = max(int(start), 0), min(int(start) + k, n_slices)
        if hi <= lo:
            continue
        w = weights[lo - int(start): hi - int(start)]
        better = w > best[lo:hi]
        best[lo:hi] = np.where(better, w, best[lo:hi])
        owner[lo:hi] = np.where(better, index, owner[lo:hi])
    return owner


def slab_boundaries(n_slices: int, starts: Sequence[int], slab_weights: Sequence[float]) -> np.ndarray:
    """Pair indices z (the pair of slices z and z + 1) across which the dominant slab changes."""
    owner = dominant_slab(n_slices, starts, slab_weights)
    changes = np.nonzero((owner[1:] != owner[:-1]) & (owner[1:] >= 0) & (owner[:-1] >= 0))[0]
    return changes.astype(np.int64)


def smooth_pairs(guide: np.ndarray, mask: Optional[np.ndarray] = None,
                 quantile: float = DEFAULT_SMOOTH_QUANTILE) -> np.ndarray:
    """Boolean (Z - 1, Y, X): both slices inside ``mask`` and the guide's gradient magnitude below its
    ``quantile`` (taken inside the mask) at both, i.e. where the anatomy itself barely changes."""
    guide = np.asarray(guide, dtype=np.float64)
    if guide.ndim != 3 or guide.shape[0] < 2:
        raise ValueError(f"seams: the guide must be a (Z, Y, X) volume with Z >= 2, got shape {guide.shape}")
    if not 0 < quantile <= 1:
        raise ValueError(f"seams: quantile must be in (0, 1], got {quantile}")
    inside = np.ones(guide.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    if inside.shape != guide.shape:
        raise ValueError(f"seams: mask shape {inside.shape} differs from the guide's {guide.shape}")
    gradient = np.sqrt(sum(g ** 2 for g in np.gradient(guide)))
    if not inside.any():
        return np.zeros((guide.shape[0] - 1,) + guide.shape[1:], dtype=bool)
    threshold = np.quantile(gradient[inside], quantile)
    calm = inside & (gradient <= threshold)
    return calm[1:] & calm[:-1]


def seam_report(volume: np.ndarray, boundaries: Sequence[int], guide: Optional[np.ndarray] = None,
                mask: Optional[np.ndarray] = None, quantile: float = DEFAULT_SMOOTH_QUANTILE) -> SeamReport:
    """Seam ratio of ``volume`` (Z, Y, X) at the pair indices ``boundaries`` (see the module docstring).

    ``guide`` (default: the volume itself) picks the smooth region with ``mask``; pairs not listed in
    ``boundaries`` are the inside pairs. Raises when either group has no smooth voxel.
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3 or volume.shape[0] < 3:
        raise ValueError(f"seams: the volume must be (Z, Y, X) with Z >= 3, got shape {volume.shape}")
    guide = volume if guide is None else np.asarray(guide)
    if guide.shape != volume.shape:
        raise ValueError(f"seams: guide shape {guide.shape} differs from the volume's {volume.shape}")
    region = smooth_pairs(guide, mask, quantile)
    is_boundary = np.zeros(volume.shape[0] - 1, dtype=bool)
    index = np.asarray(list(boundaries), dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= volume.shape[0] - 1):
        raise ValueError(f"seams: boundary pair indices must lie in 0..{volume.shape[0] - 2}, got {index.min()}..{index.max()}")
    is_boundary[index] = True
    difference = np.abs(np.diff(volume, axis=0))
    at_boundary = region & is_boundary[:, None, None]
    inside = region & ~is_boundary[:, None, None]
    n_boundary, n_inside = int(at_boundary.sum()), int(inside.sum())
    if n_boundary == 0 or n_inside == 0:
        raise ValueError(f"seams: no smooth voxel at {'boundary' if n_boundary == 0 else 'inside'} pairs "
                         f"({len(index)} boundaries over {volume.shape[0] - 1} pairs); give a larger mask or quantile")
    boundary_mean = float(difference[at_boundary].mean())
    inside_mean = float(difference[inside].mean())
    if boundary_mean == inside_mean:
        ratio = 1.0
    elif min(boundary_mean, inside_mean) == 0.0:
        ratio = float("inf")
    else:
        ratio = max(boundary_mean / inside_mean, inside_mean / boundary_mean)
    return SeamReport(ratio, boundary_mean, inside_mean, n_boundary, n_inside)


def seam_ratio(volume: np.ndarray, boundaries: Sequence[int], guide: Optional[np.ndarray] = None,
               mask: Optional[np.ndarray] = None, quantile: float = DEFAULT_SMOOTH_QUANTILE) -> float:
    """Just the ratio of :func:`seam_report` (1.0 = no seam; the issue's target is <= 1.1)."""
    return seam_report(volume, boundaries, guide, mask, quantile).ratio
