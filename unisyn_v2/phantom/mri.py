"""MR tissue signals, partial-volume mixing, receive-bias field and Rician noise.

The signal equations live in :mod:`unisyn_v2.metadata.signal_equations` (shared with the qMRI head).
Each tissue's signal comes from its relaxation times and the image's TR/TE/TI/flip angle; a voxel's
signal is the fraction-weighted sum of its tissues' signals (the magnetisation adds before the
magnitude is taken for all equations below, a first-order partial-volume model).
"""

from __future__ import annotations

import logging

import numpy as np

from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.signal_equations import (  # noqa: F401  (the phantom's equations, re-exported)
    MPRAGE_INVERSION_EFFICIENCY, MPRAGE_PULSES_TO_CENTRE, inversion_recovery, mprage, spin_echo, spoiled_gre,
)

from .protocols import nominal_protocol
from .tissues import ALL_TISSUES, BRAIN_TISSUES, TISSUES, PhantomSubject, mri_parameters

logger = logging.getLogger(__name__)

GAMMA_MHZ_PER_T = 42.577  # proton gyromagnetic ratio / 2 pi
# Gadobutrol r1 relaxivity in plasma (1/(mM s)): 5.2 at 1.5 T, 5.0 at 3 T (Rohrer et al., Invest Radiol 2005).
GD_R1_PER_MS = {1.5: 5.2e-3, 3.0: 5.0e-3}


def _filled(metadata: ImageMetadata, modality: str) -> ImageMetadata:
    field = metadata.field_strength if metadata.field_strength is not None else 3.0
    nominal = nominal_protocol(modality, field)
    if modality in ("T1w", "T1CE") and metadata.repetition_time is not None and metadata.inversion_time is None:
        if metadata.repetition_time < 100.0:  # a spoiled GRE given without TI stays a spoiled GRE
            nominal = ImageMetadata(field_strength=field, echo_time=5.0, flip_angle=25.0)
    return metadata.merged_with(nominal)


def tissue_signals(modality: str, metadata: ImageMetadata, subject: PhantomSubject) -> np.ndarray:
    """Noise-free signal of every tissue (ALL_TISSUES order) for an MR protocol; fields left out get nominal values."""
    m = _filled(metadata, modality)
    p = mri_parameters(subject, float(m.field_strength))
    tr, te = float(m.repetition_time), float(m.echo_time)
    t1 = p["t1"]
    if modality == "T1CE":  # gadolinium shortens T1: 1/T1' = 1/T1 + r1 C
        r1 = GD_R1_PER_MS[1.5] if m.field_strength < 2.25 else GD_R1_PER_MS[3.0]
        t1 = 1.0 / (1.0 / t1 + r1 * p["gd"])
    if modality in ("T2w", "PD"):
        return spin_echo(p["pd"], t1, p["t2"], tr, te)
    if modality == "FLAIR":
        return inversion_recovery(p["pd"], t1, p["t2"], tr, te, float(m.inversion_time))
    if modality in ("T1w", "T1CE"):
        if m.inversion_time is not None:
            return mprage(p["pd"], t1, p["t2s"], tr, te, float(m.inversion_time), float(m.flip_angle))
        return spoiled_gre(p["pd"], t1, p["t2s"], tr, te, float(m.flip_angle))
    if modality in ("T2star", "SWI"):
        return spoiled_gre(p["pd"], t1, p["t2s"], tr, te, float(m.flip_angle))
    raise ValueError(f"no MR signal model for modality {modality!r}")


def swi_phase(metadata: ImageMetadata, subject: PhantomSubject) -> np.ndarray:
    """Per-tissue phase (rad) = 2 pi gamma B0 chi TE / 3 (geometry factor 1/3; Haacke et al., MRM 2004)."""
    m = _filled(metadata, "SWI")
    chi = mri_parameters(subject, float(m.field_strength))["chi"]
    return 2.0 * np.pi * GAMMA_MHZ_PER_T * float(m.field_strength) * chi * float(m.echo_time) * 1e-3 / 3.0


def bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative receive field 1 + a f, f a random quadratic polynomial with max |f| = 1."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    terms = [z, y, x, z * y, z * x, y * x, z * z - 1.0 / 3.0, y * y - 1.0 / 3.0, x * x - 1.0 / 3.0]
    coefficients = rng.normal(size=len(terms)) * np.array([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    f = sum(float(c) * t for c, t in zip(coefficients, terms))
    f = np.broadcast_to(f, shape)
    return (1.0 + amplitude * f / max(float(np.abs(f).max()), 1e-6)).astype(np.float32)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Gudbjartsson & Patz, MRM 1995)."""
    real = signal + rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=signal.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag)


def simulate_mri(modality: str, tissues: dict[str, np.ndarray], metadata: ImageMetadata, subject: PhantomSubject,
                 rng: np.random.Generator, noise: bool = True, bias: bool = True) -> np.ndarray:
    """One MR image in arbitrary scanner units: mixed tissue signals, bias field, Rician noise."""
    signals = tissue_signals(modality, metadata, subject)
    shape = next(iter(tissues.values())).shape
    image = np.zeros(shape, dtype=np.float32)
    for name, s in zip(ALL_TISSUES, signals):
        if name in tissues and s != 0.0:
            image += np.float32(s) * tissues[name]
    if modality == "SWI":  # phase mask (1 - phase/pi)^4 darkens paramagnetic veins and iron
        phase = np.zeros(shape, dtype=np.float32)
        for name, ph in zip(ALL_TISSUES, swi_phase(metadata, subject)):
            if name in tissues and ph != 0.0:
                phase += np.float32(ph) * tissues[name]
        image *= np.clip(1.0 - phase / np.pi, 0.0, 1.0) ** 4
    field = metadata.field_strength if metadata.field_strength is not None else 3.0
    # Coil sensitivity inhomogeneity is larger at high field (a few % at 1.5 T, up to ~20% at 3 T).
    amplitude = float(rng.uniform(0.03, 0.10) if field < 2.25 else rng.uniform(0.05, 0.20))
    gain = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))  # receiver scaling, arbitrary units
    snr = float(rng.uniform(15.0, 30.0) if field < 2.25 else rng.uniform(25.0, 50.0))
    if bias:
        image *= bias_field(shape, amplitude, rng)
    image *= np.float32(gain)
    if noise:
        reference = gain * max(float(signals[TISSUES.index(t)]) for t in BRAIN_TISSUES)
        image = rician(image, reference / snr, rng)
    return image.astype(np.float32)
