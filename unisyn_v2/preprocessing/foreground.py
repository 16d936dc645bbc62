"""Head foreground and brain masks when a dataset ships none.

Background is not zero in every family (CT air is -1000 HU; MRI magnitude noise is Rician), so the
threshold depends on the family: CT > -500 HU, MRI and PET above half of Otsu's threshold (at least 5 % of
the image's 99.5th percentile).
The union over a case's images is reduced to its largest connected component and hole-filled (in 3D and
slice by slice, so a head cut open by the field of view still gets its skull). The head mask is where CT is
trained and scored (the skull matters there), and where a prediction is written: outside it is air/zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

CT_AIR_THRESHOLD_HU = -500.0
RELATIVE_THRESHOLD = 0.05


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the histogram."""
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight = np.cumsum(counts).astype(np.float64)
    moment = np.cumsum(counts * centres)
    total, total_moment = weight[-1], moment[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_moment * weight / total - moment) ** 2 / (weight * (total - weight))
    return float(centres[int(np.nanargmax(np.where(np.isfinite(between), between, -1.0)))])


def image_foreground(image: np.ndarray, modality: str) -> np.ndarray:
    """Voxels that belong to the head in one image.

    MRI/PET: above half of Otsu's threshold (on the image clipped to its 99.5th percentile) and at least 5 % of
    that percentile. Half of Otsu keeps the scalp and separates a noisy or smoothed background: on the 8-bit
    ICBM152 T1w template, whose background sits at 5 % of the 99.5th percentile, the 5 % rule alone took 90 %
    of the volume as head (CT of the same space: 59 %).
    """
    if get_modality(modality).family is ModalityFamily.CT:
        return image > CT_AIR_THRESHOLD_HU
    positive = image[image > 0]
    if positive.size == 0:
        return np.zeros(image.shape, dtype=bool)
    top = float(np.percentile(positive, 99.5))
    sample = positive[:: max(1, positive.size // 2_000_000)]  # Otsu on at most ~2 M voxels
    threshold = max(RELATIVE_THRESHOLD * top, 0.5 * otsu_threshold(np.minimum(sample, top)))
    return image > threshold


def fill_head_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D and then in every axial (z) slice.

    On MRI the skull and air sinuses are dark, so the head foreground is a scalp shell around the brain;
    where the field of view cuts the head (the neck, the vertex) that shell is open and a 3D fill leaves
    the skull out. In each axial slice the scalp still forms a closed ring, so the slice-wise fill closes it.
    """
    filled = ndimage.binary_fill_holes(mask)
    for z in range(filled.shape[0]):
        if filled[z].any():
            filled[z] = ndimage.binary_fill_holes(filled[z])
    return filled


def case_foreground(images: Sequence[np.ndarray], modalities: Sequence[str]) -> np.ndarray:
    """The head: union of the images' foregrounds, largest component, holes filled (:func:`fill_head_holes`)."""
    union = np.zeros(images[0].shape, dtype=bool)
    for image, modality in zip(images, modalities):
        union |= image_foreground(image, modality)
    labels, count = ndimage.label(union)
    if count > 1:
        sizes = ndimage.sum_labels(union, labels, index=np.arange(1, count + 1))
        union = labels == (int(np.argmax(sizes)) + 1)
    return fill_head_holes(union)
