"""Acquisition protocols: per-image parameters drawn from clinical ranges for each modality and field.

Every number drawn here is written to dataset.json and is exactly what the simulator uses, so a model
conditioned on metadata sees the true cause of each contrast change. Values are rounded before use.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

from .tissues import RELAXATION

logger = logging.getLogger(__name__)

MANUFACTURERS: tuple[str, ...] = ("Siemens", "GE", "Philips")
FIELD_STRENGTHS: tuple[float, ...] = (1.5, 3.0)
MR_MODELS: dict[tuple[str, float], tuple[str, ...]] = {
    ("Siemens", 3.0): ("Prisma", "Skyra", "TrioTim"), ("Siemens", 1.5): ("Avanto", "Aera"),
    ("GE", 3.0): ("Discovery MR750", "SIGNA Premier"), ("GE", 1.5): ("SIGNA HDxt", "Optima MR450w"),
    ("Philips", 3.0): ("Achieva", "Ingenia"), ("Philips", 1.5): ("Achieva", "Ingenia"),
}
CT_MODELS: dict[str, tuple[str, ...]] = {
    "Siemens": ("SOMATOM Definition AS", "SOMATOM Force"), "GE": ("Revolution CT", "LightSpeed VCT"),
    "Philips": ("Brilliance 64", "IQon Spectral CT"),
}
# Brain reconstruction kernels (smooth to sharp) and their noise relative to the standard kernel.
CT_KERNELS: dict[str, dict[str, float]] = {
    "Siemens": {"H30s": 0.8, "J40s": 1.0, "H60s": 1.4},
    "GE": {"SOFT": 0.8, "STANDARD": 1.0, "BONE": 1.4},
    "Philips": {"UA": 0.8, "UB": 1.0, "UC": 1.3},
}
# Effective reconstructed resolution (PSF FWHM, mm) of common PET/CT systems with clinical
# reconstructions (digital systems about 4 mm, older time-of-flight systems 5-6 mm).
PET_MODELS: dict[str, dict[str, float]] = {
    "Siemens": {"Biograph Vision": 4.0, "Biograph mCT": 5.0},
    "GE": {"Discovery MI": 4.5, "Discovery 690": 5.5},
    "Philips": {"Vereos": 4.0, "Gemini TF": 6.0},
}
DEFAULT_PSF_MM = 5.0
PET_UNITS = {"FDG": "SUV", "AV45": "SUVR", "TAU": "SUVR"}
# Injected activity (MBq) and uptake time (min): EANM/SNMMI procedure guidelines (FDG 185-370 MBq,
# 30-60 min; florbetapir 370 MBq, 50 min; flortaucipir 370 MBq, 80-100 min).
PET_DOSE = {"FDG": (185.0, 370.0), "AV45": (333.0, 407.0), "TAU": (333.0, 407.0)}
PET_UPTAKE = {"FDG": (30.0, 60.0), "AV45": (45.0, 60.0), "TAU": (75.0, 105.0)}


def _u(rng: np.random.Generator, low: float, high: float, digits: int) -> float:
    return round(float(rng.uniform(low, high)), digits)


def flair_null_ti(repetition_time: float, field_strength: float) -> float:
    """TI (ms) nulling nominal CSF: T1 ln(2 / (1 + exp(-TR/T1))), as scanners set it for FLAIR."""
    r = RELAXATION["csf"]
    t1 = r.t1_15 * (field_strength / 1.5) ** math.log2(r.t1_30 / r.t1_15)
    return t1 * math.log(2.0 / (1.0 + math.exp(-repetition_time / t1)))


def _mri_timing(name: str, rng: np.random.Generator, field: float) -> dict[str, float]:
    """TR/TE/TI/flip for one MR image, from the typical-protocol table (3 T values unless noted)."""
    high = field >= 2.0
    if name in ("T1w", "T1CE"):
        if rng.random() < 0.8:  # MPRAGE (Mugler & Brookeman, MRM 1990; ADNI protocols)
            if high:
                return {"repetition_time": _u(rng, 2000, 2500, 0), "echo_time": _u(rng, 2.0, 3.0, 2),
                        "inversion_time": _u(rng, 850, 1000, 0), "flip_angle": float(rng.choice([8.0, 9.0]))}
            return {"repetition_time": _u(rng, 2100, 2700, 0), "echo_time": _u(rng, 3.0, 4.0, 2),
                    "inversion_time": _u(rng, 950, 1100, 0), "flip_angle": float(rng.choice([7.0, 8.0, 9.0]))}
        return {"repetition_time": _u(rng, 15, 25, 1), "echo_time": _u(rng, 4.0, 6.0, 2),
                "flip_angle": _u(rng, 20, 30, 0)}  # spoiled gradient echo (FLASH/SPGR)
    if name == "T2w":
        return {"repetition_time": _u(rng, 3000, 6000, 0), "echo_time": _u(rng, 80, 120, 1), "flip_angle": 90.0}
    if name == "PD":
        return {"repetition_time": _u(rng, 2000, 4000, 0), "echo_time": _u(rng, 10, 30, 1), "flip_angle": 90.0}
    if name == "FLAIR":
        # 2D turbo inversion recovery. 3D variable-flip-angle FLAIR (TE 300-400 ms) is not drawn: its
        # nominal TE does not enter a single-exponential decay, so the equation would misstate it.
        tr, te = _u(rng, 8000, 11000, 0), _u(rng, 80, 140, 1)
        ti = round(flair_null_ti(tr, field) * float(rng.uniform(0.97, 1.03)), 0)
        return {"repetition_time": tr, "echo_time": te, "inversion_time": ti, "flip_angle": 90.0}
    if name in ("T2star", "SWI"):
        tr = _u(rng, 20, 50, 1)
        # the echo must be read out before the next excitation: TE stays at least 5 ms below TR
        return {"repetition_time": tr, "echo_time": _u(rng, 15, min(25.0, tr - 5.0), 1), "flip_angle": 15.0}
    raise ValueError(f"no MR protocol for modality {name!r}")


def draw_protocol(modality_name: str, rng: np.random.Generator, voxel_size: tuple[float, float, float] | None = None,
                  field_strength: float | None = None, manufacturer: str | None = None,
                  scanner_model: str | None = None) -> ImageMetadata:
    """Acquisition metadata for one image; scanner fields left None are drawn (session sharing them)."""
    modality = get_modality(modality_name)
    if manufacturer is None:
        manufacturer = str(rng.choice(MANUFACTURERS))
    vox = None if voxel_size is None else tuple(round(float(v), 4) for v in voxel_size)
    if modality.family is ModalityFamily.MRI:
        field = float(field_strength if field_strength is not None else rng.choice(FIELD_STRENGTHS, p=[0.4, 0.6]))
        models = MR_MODELS.get((manufacturer, field), ("unknown",))
        model = scanner_model or str(rng.choice(models))
        return ImageMetadata(field_strength=field, manufacturer=manufacturer, scanner_model=model, voxel_size=vox,
                             **_mri_timing(modality.name, rng, field))
    if modality.family is ModalityFamily.CT:
        model = scanner_model or str(rng.choice(CT_MODELS.get(manufacturer, ("unknown",))))
        kernel = str(rng.choice(list(CT_KERNELS.get(manufacturer, {"STANDARD": 1.0}))))
        return ImageMetadata(manufacturer=manufacturer, scanner_model=model, voxel_size=vox,
                             kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])), reconstruction_kernel=kernel)
    tracer = modality.tracer or "FDG"
    model = scanner_model or str(rng.choice(list(PET_MODELS.get(manufacturer, {"unknown": DEFAULT_PSF_MM}))))
    return ImageMetadata(manufacturer=manufacturer, scanner_model=model, voxel_size=vox, tracer=tracer,
                         unit=PET_UNITS[tracer], injected_dose=_u(rng, *PET_DOSE[tracer], 0),
                         uptake_time=_u(rng, *PET_UPTAKE[tracer], 0))


def nominal_protocol(modality_name: str, field_strength: float = 3.0) -> ImageMetadata:
    """Mid-range protocol used to fill fields a caller leaves out of the metadata it simulates."""
    modality = get_modality(modality_name)
    field = float(field_strength)
    if modality.family is ModalityFamily.MRI:
        timing = {
            "T1w": (2300.0, 2.5, 900.0, 9.0) if field >= 2.0 else (2400.0, 3.5, 1000.0, 8.0),
            "T2w": (4500.0, 100.0, None, 90.0), "PD": (3000.0, 20.0, None, 90.0),
            "FLAIR": (9000.0, 110.0, round(flair_null_ti(9000.0, field), 0), 90.0),
            "T2star": (35.0, 20.0, None, 15.0), "SWI": (35.0, 20.0, None, 15.0),
        }.get(modality.name if modality.name != "T1CE" else "T1w")
        if timing is None:
            raise ValueError(f"no MR protocol for modality {modality.name!r}")
        tr, te, ti, flip = timing
        return ImageMetadata(field_strength=field, repetition_time=tr, echo_time=te, inversion_time=ti, flip_angle=flip)
    if modality.family is ModalityFamily.CT:
        return ImageMetadata(kvp=120.0)
    tracer = modality.tracer or "FDG"
    return ImageMetadata(tracer=tracer, unit=PET_UNITS[tracer], injected_dose=sum(PET_DOSE[tracer]) / 2.0,
                         uptake_time=sum(PET_UPTAKE[tracer]) / 2.0)


def psf_fwhm_mm(metadata: ImageMetadata) -> float:
    """PET resolution implied by the scanner model (a scanner's reconstruction fixes it)."""
    for models in PET_MODELS.values():
        if metadata.scanner_model in models:
            return models[metadata.scanner_model]
    return DEFAULT_PSF_MM


def ct_kernel_noise_factor(metadata: ImageMetadata) -> float:
    """Noise of the reconstruction kernel relative to a standard brain kernel."""
    for kernels in CT_KERNELS.values():
        if metadata.reconstruction_kernel in kernels:
            return kernels[metadata.reconstruction_kernel]
    return 1.0
