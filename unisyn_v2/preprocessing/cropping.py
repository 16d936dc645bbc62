"""Crop a case to its foreground box and paste predictions back.

Cropping to the union of all images' (and brain masks') nonzero voxels removes empty space before
resampling, as nnU-Net does; the box is stored in the case properties as a JSON list so the prediction
can be pasted into the original grid, filled with the target's background (e.g. -1000 HU for CT).
Boxes index the last three axes (z, y, x), so (C, Z, Y, X) stacks crop the same way as volumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

BBox = tuple[slice, slice, slice]


class CroppingError(ValueError):
    """Raised for empty foregrounds, mismatched shapes and invalid boxes."""


class EmptyForegroundError(CroppingError):
    """Raised when no image or mask of a case has a nonzero voxel."""


def _spatial_shapes(arrays: Sequence[np.ndarray]) -> tuple[int, int, int]:
    """The common (Z, Y, X) shape; every array must be (Z, Y, X) or (C, Z, Y, X)."""
    if len(arrays) == 0:
        raise CroppingError("masks is empty; pass at least one image or brain mask of the case")
    shapes = {tuple(np.shape(a)[-3:]) for a in arrays}
    bad = [np.shape(a) for a in arrays if np.ndim(a) not in (3, 4)]
    if bad or len(shapes) != 1:
        raise CroppingError(
            f"masks must share one (Z, Y, X) shape and be 3D or 4D, got shapes {[np.shape(a) for a in arrays]}; "
            "resample all images of a case to one grid first"
        )
    return shapes.pop()  # type: ignore[return-value]


def _nonzero_union(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels that are finite and nonzero in any array (channels of 4D arrays included)."""
    union = np.zeros(_spatial_shapes(masks), dtype=bool)
    for array in masks:
        array = np.asarray(array)
        nonzero = (array != 0) & np.isfinite(array) if array.dtype.kind == "f" else array != 0
        union |= nonzero.any(axis=0) if nonzero.ndim == 4 else nonzero
    return union


def foreground_bbox(masks: Sequence[np.ndarray], margin: int = 0) -> BBox:
    """Tightest box around the nonzero union of ``masks``, grown by ``margin`` voxels, clipped to the volume.

    Pass brain masks or head-foreground masks (``foreground.case_foreground``) rather than raw CT, whose
    background is -1000 HU, not 0. nnU-Net hole-fills the union first (``binary_fill_holes``); holes are
    enclosed by foreground, so filling cannot change the box and is skipped here.
    """
    if not isinstance(margin, (int, np.integer)) or margin < 0:
        raise CroppingError(f"margin must be a non-negative int (voxels), got {margin!r}")
    union = _nonzero_union(masks)
    if not union.any():
        raise EmptyForegroundError(
            f"foreground is empty: no finite nonzero voxel in any of {len(masks)} image(s)/mask(s) of shape "
            f"{union.shape}; check that the images were read correctly and the brain mask is not all zero"
        )
    bbox = []
    for axis in range(3):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        start, stop = int(present[0]) - margin, int(present[-1]) + 1 + margin
        bbox.append(slice(max(start, 0), min(stop, union.shape[axis])))
    logger.debug("foreground bbox %s of shape %s", bbox_to_list(tuple(bbox)), union.shape)
    return tuple(bbox)  # type: ignore[return-value]


def _check_bbox(bbox: BBox, shape: Sequence[int]) -> None:
    if len(bbox) != 3 or len(shape) != 3:
        raise CroppingError(f"bbox must have 3 slices for (z, y, x) and shape 3 sizes, got {bbox} and {shape}")
    for axis, (s, size) in enumerate(zip(bbox, shape)):
        if not (isinstance(s, slice) and s.step in (None, 1) and s.start is not None and s.stop is not None):
            raise CroppingError(f"bbox axis {axis} must be a slice(start, stop) with step 1, got {s!r}")
        if not 0 <= s.start < s.stop <= size:
            raise CroppingError(
                f"bbox axis {axis} = [{s.start}, {s.stop}) lies outside [0, {size}) or is empty; "
                "use a box computed on this volume's grid (foreground_bbox)"
            )


def crop_to_bbox(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """View of ``array`` (Z, Y, X) or (C, Z, Y, X) inside ``bbox`` (copy it before writing to disk)."""
    if array.ndim not in (3, 4):
        raise CroppingError(f"array must be (Z, Y, X) or (C, Z, Y, X), got shape {array.shape}")
    _check_bbox(bbox, array.shape[-3:])
    return array[(Ellipsis, *bbox)]


def uncrop(array: np.ndarray, bbox: BBox, full_shape: Sequence[int], fill_value: float = 0.0) -> np.ndarray:
    """Paste a cropped (C,)Z,Y,X ``array`` into a new volume of spatial ``full_shape`` filled with ``fill_value``.

    ``fill_value`` is the target's background in its output unit (e.g. -1000 for CT in HU).
    """
    full_shape = tuple(int(n) for n in full_shape)
    if array.ndim not in (3, 4):
        raise CroppingError(f"array must be (Z, Y, X) or (C, Z, Y, X), got shape {array.shape}")
    _check_bbox(bbox, full_shape)
    box_shape = tuple(s.stop - s.start for s in bbox)
    if array.shape[-3:] != box_shape:
        raise CroppingError(
            f"array spatial shape {array.shape[-3:]} does not match bbox size {box_shape}; "
            "resample the prediction back to the cropped shape before uncropping"
        )
    out = np.full(array.shape[:-3] + full_shape, fill_value, dtype=array.dtype)
    out[(Ellipsis, *bbox)] = array
    return out


def bbox_to_list(bbox: BBox) -> list[list[int]]:
    """JSON form ``[[z0, z1], [y0, y1], [x0, x1]]`` (half-open, like Python slices)."""
    return [[int(s.start), int(s.stop)] for s in bbox]


def bbox_from_list(data: Sequence[Sequence[int]]) -> BBox:
    """Inverse of :func:`bbox_to_list`; rejects anything but three [start, stop) integer pairs."""
    try:
        pairs = [(int(a), int(b)) for a, b in data]
        if len(pairs) != 3 or any(a < 0 or b <= a for a, b in pairs):
            raise ValueError
    except (TypeError, ValueError):
        raise CroppingError(
            f"bbox must be [[z0, z1], [y0, y1], [x0, x1]] with 0 <= start < stop, got {data!r}"
        ) from None
    return tuple(slice(a, b) for a, b in pairs)  # type: ignore[return-value]
