"""The modality vocabulary: every image belongs to a family (MRI, CT, PET) that fixes its intensity contract.

Users add a modality with :func:`register_modality` (for example in a small module imported before
planning); the dataset check rejects names that are not registered and lists the known ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

logger = logging.getLogger(__name__)


class ModalityFamily(StrEnum):
    """Families share an intensity normalisation and a set of meaningful metadata fields."""

    MRI = "MRI"
    CT = "CT"
    PET = "PET"


@dataclass(frozen=True)
class Modality:
    """A named image type; ``tracer`` is set for PET modalities only."""

    name: str
    family: ModalityFamily
    tracer: str | None = None
    description: str = ""


_REGISTRY: dict[str, Modality] = {}


class UnknownModalityError(ValueError):
    """Raised for a modality name that is not in the vocabulary."""


def register_modality(modality: Modality, overwrite: bool = False) -> None:
    """Add a modality to the vocabulary (the documented way to extend it)."""
    key = modality.name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"modality {modality.name!r} is already registered; pass overwrite=True to replace it")
    if key in _REGISTRY:
        logger.warning("replacing registered modality %s", modality.name)
    _REGISTRY[key] = modality


def known_modalities() -> list[str]:
    """Names of every registered modality, in registration order."""
    return [m.name for m in _REGISTRY.values()]


def get_modality(name: str) -> Modality:
    """Look a modality up by name (case-insensitive); unknown names list the known ones."""
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise UnknownModalityError(
            f"unknown modality {name!r}; known modalities: {', '.join(known_modalities())} "
            "(add one with unisyn_v2.metadata.modalities.register_modality)"
        ) from None


for _m in (
    Modality("T1w", ModalityFamily.MRI, description="T1-weighted (MPRAGE or spoiled gradient echo)"),
    Modality("T2w", ModalityFamily.MRI, description="T2-weighted spin echo"),
    Modality("FLAIR", ModalityFamily.MRI, description="fluid-attenuated inversion recovery"),
    Modality("PD", ModalityFamily.MRI, description="proton-density weighted spin echo"),
    Modality("T1CE", ModalityFamily.MRI, description="contrast-enhanced T1-weighted"),
    Modality("SWI", ModalityFamily.MRI, description="susceptibility-weighted imaging (magnitude)"),
    Modality("T2star", ModalityFamily.MRI, description="T2*-weighted gradient echo"),
    Modality("CT", ModalityFamily.CT, description="computed tomography in Hounsfield units"),
    Modality("FDG-PET", ModalityFamily.PET, tracer="FDG", description="glucose metabolism"),
    Modality("AV45-PET", ModalityFamily.PET, tracer="AV45", description="florbetapir amyloid"),
    Modality("TAU-PET", ModalityFamily.PET, tracer="TAU", description="tau tracer (e.g. flortaucipir)"),
):
    register_modality(_m)
