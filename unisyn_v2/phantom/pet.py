"""PET uptake (SUV or SUVR) per tracer, blurred by the scanner PSF, with count-dependent noise."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from unisyn_v2.metadata.fields import ImageMetadata

from .protocols import PET_DOSE, PET_UNITS, PET_UPTAKE, psf_fwhm_mm
from .tissues import ALL_TISSUES, PhantomSubject

logger = logging.getLogger(__name__)

F18_HALF_LIFE_MIN = 109.77
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
# Relative noise in a cortex-like voxel at the tracer's reference dose and uptake time, and the value
# it refers to; noise scales with sqrt(value / counts) (Poisson statistics after reconstruction).
_NOISE_REFERENCE = {"FDG": (0.06, 8.0), "AV45": (0.06, 1.2), "TAU": (0.07, 1.2)}
# Brain FDG SUV still rises between 30 and 60 min after injection (Hamberg et al., JNM 1994;35:1308).
FDG_REFERENCE_UPTAKE_MIN = 45.0
FDG_UPTAKE_EXPONENT = 0.2


def tracer_values(tracer: str, metadata: ImageMetadata, subject: PhantomSubject) -> np.ndarray:
    """Noise-free uptake of every tissue (ALL_TISSUES order) in the tracer's unit; 0 where the subject has no value."""
    table = {"FDG": subject.fdg_suv, "AV45": subject.av45_suvr, "TAU": subject.tau_suvr}[tracer]
    values = np.asarray([table.get(t, 0.0) for t in ALL_TISSUES], dtype=np.float64)
    if tracer == "FDG" and metadata.uptake_time is not None:
        values *= (float(metadata.uptake_time) / FDG_REFERENCE_UPTAKE_MIN) ** FDG_UPTAKE_EXPONENT
    return values


def _relative_counts(tracer: str, metadata: ImageMetadata) -> float:
    """Detected counts relative to the tracer's reference protocol: dose times decay to scan start."""
    dose = float(metadata.injected_dose) if metadata.injected_dose is not None else sum(PET_DOSE[tracer]) / 2.0
    uptake = float(metadata.uptake_time) if metadata.uptake_time is not None else sum(PET_UPTAKE[tracer]) / 2.0
    reference_dose, reference_uptake = sum(PET_DOSE[tracer]) / 2.0, sum(PET_UPTAKE[tracer]) / 2.0
    decay = math.exp(-math.log(2.0) * (uptake - reference_uptake) / F18_HALF_LIFE_MIN)
    return dose / reference_dose * decay


def simulate_pet(tracer: str, tissues: dict[str, np.ndarray], metadata: ImageMetadata, subject: PhantomSubject,
                 rng: np.random.Generator, voxel_size: tuple[float, float, float], noise: bool = True,
                 blur: bool = True) -> np.ndarray:
    """PET image in SUV (FDG) or SUVR (AV45, TAU); ``voxel_size`` (x, y, z) mm converts the PSF to voxels."""
    if tracer not in PET_UNITS:
        raise ValueError(f"unknown tracer {tracer!r}; known: {', '.join(PET_UNITS)}")
    values = tracer_values(tracer, metadata, subject)
    shape = next(iter(tissues.values())).shape
    image = np.zeros(shape, dtype=np.float32)
    for name, v in zip(ALL_TISSUES, values):
        if name in tissues and v != 0.0:
            image += np.float32(v) * tissues[name]
    if blur:
        sigma_zyx = [psf_fwhm_mm(metadata) * FWHM_TO_SIGMA / float(v) for v in reversed(voxel_size)]
        image = ndimage.gaussian_filter(image, sigma_zyx, mode="constant")
    relative, reference = _NOISE_REFERENCE[tracer]
    if noise:
        scale = relative * math.sqrt(reference / _relative_counts(tracer, metadata))
        sd = scale * np.sqrt(np.maximum(image, 0.0))
        image = image + sd * rng.standard_normal(size=shape).astype(np.float32)
    return np.maximum(image, 0.0).astype(np.float32)
