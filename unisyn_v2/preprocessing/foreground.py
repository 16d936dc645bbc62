"""Head foreground and brain masks when a dataset ships none.

Background is not zero in every family (CT air is -1000 HU; MRI magnitude noise is Rician), so the
threshold depends on the family: CT > -500 HU, MRI and PET above 5% of the image's 99.5th percentile.
The union over a case's images is hole-filled and reduced to its largest connected component.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

CT_AIR_THRESHOLD_HU = -500.0
RELATIVE_THRESHOLD = 0.05


def image_foreground(image: np.ndarray, modality: str) -> np.ndarray:
    """Voxels that belong to the head in one image."""
    if get_modality(modality).family is ModalityFamily.CT:
        return image > CT_AIR_THRESHOLD_HU
    positive = image[image > 0]
    if positive.size == 0:
        return np.zeros(image.shape, dtype=bool)
    return image > RELATIVE_THRESHOLD * float(np.percentile(positive, 99.5))


def case_foreground(images: Sequence[np.ndarray], modalities: Sequence[str]) -> np.ndarray:
    """Union of the images' foregrounds, hole-filled, largest component only."""
    union = np.zeros(images[0].shape, dtype=bool)
    for image, modality in zip(images, modalities):
        union |= image_foreground(image, modality)
    labels, count = ndimage.label(union)
    if count > 1:
        sizes = ndimage.sum_labels(union, labels, index=np.arange(1, count + 1))
        union = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(union)
