"""CT in Hounsfield units: attenuation mixes linearly with tissue fractions, bone HU depends on kVp."""

from __future__ import annotations

import logging

import numpy as np

from unisyn_v2.metadata.fields import ImageMetadata

from .protocols import ct_kernel_noise_factor
from .tissues import ALL_TISSUES, PhantomSubject, ct_values

logger = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024.0, 3071.0  # 12-bit CT storage window
NOISE_HU = (3.0, 8.0)  # brain noise at typical head-CT doses with a standard kernel


def simulate_ct(tissues: dict[str, np.ndarray], metadata: ImageMetadata, subject: PhantomSubject,
                rng: np.random.Generator, noise: bool = True) -> np.ndarray:
    """CT image (HU, float32): fraction-weighted HU at the image's kVp plus Gaussian noise."""
    kvp = float(metadata.kvp) if metadata.kvp is not None else 120.0
    values = ct_values(subject, kvp)
    shape = next(iter(tissues.values())).shape
    image = np.full(shape, -1000.0, dtype=np.float32)  # voxels not covered by any tissue are air
    for name, hu in zip(ALL_TISSUES, values):
        if name in tissues:
            image += np.float32(hu + 1000.0) * tissues[name]
    # Sharper kernels trade resolution for noise; the factor is fixed by the kernel in the metadata.
    sigma = float(rng.uniform(*NOISE_HU)) * ct_kernel_noise_factor(metadata)
    if noise:
        image += rng.normal(0.0, sigma, size=shape).astype(np.float32)
    return np.clip(image, HU_MIN, HU_MAX).astype(np.float32)
