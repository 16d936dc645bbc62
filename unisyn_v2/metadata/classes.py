"""Metadata classes: the (modality, parameter set) groups that NeuroCLIP batches are built from.

The papers put one sample of every imaging-parameter class in each contrastive batch, so that the
negatives that matter (same modality, other protocol) are always present. Continuous parameters are
binned into bands that change contrast visibly:

- MRI: modality, field strength (1.5 T band below 2.25 T, 3 T band above), echo time band
  (short < 15 ms, medium 15-60 ms, long > 60 ms) and whether an inversion pulse is used (TI given).
- CT: modality and tube voltage band (< 110 kVp, 110-130, > 130).
- PET: modality (which fixes the tracer) and unit.
A missing value is its own band ("na").
"""

from __future__ import annotations

from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.metadata.prompts import ImageDescription


def _band(value: float | None, edges: tuple[float, ...], names: tuple[str, ...]) -> str:
    if value is None:
        return "na"
    for edge, name in zip(edges, names):
        if value < edge:
            return name
    return names[-1]


def metadata_class_key(description: ImageDescription) -> str:
    """A short, stable key such as ``T2w|3T|TE-long|noIR`` naming the image's parameter class."""
    modality = get_modality(description.modality)
    meta = description.metadata
    if modality.family is ModalityFamily.MRI:
        field = _band(meta.field_strength, (2.25,), ("1.5T", "3T"))
        echo = _band(meta.echo_time, (15.0, 60.0), ("TE-short", "TE-medium", "TE-long"))
        inversion = "IR" if meta.inversion_time else "noIR"
        return f"{modality.name}|{field}|{echo}|{inversion}"
    if modality.family is ModalityFamily.CT:
        return f"{modality.name}|" + _band(meta.kvp, (110.0, 130.0), ("kVp-low", "kVp-mid", "kVp-high"))
    return f"{modality.name}|{meta.unit or 'na'}"
