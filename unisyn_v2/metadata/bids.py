"""BIDS JSON sidecars as a metadata source, with the unit conversions BIDS needs (seconds -> ms).

A sidecar sits next to its image with the same stem (``sub-01_T1w.nii.gz`` -> ``sub-01_T1w.json``).
Only fields the dataset.json leaves empty are taken from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unisyn_v2.metadata.fields import PLAUSIBLE_RANGES, ImageMetadata, MetadataError

logger = logging.getLogger(__name__)

# BIDS key -> (our field, factor to our unit)
_SECONDS_TO_MS = 1000.0
_BIDS_NUMERIC = {
    "MagneticFieldStrength": ("field_strength", 1.0),
    "RepetitionTime": ("repetition_time", _SECONDS_TO_MS),
    "EchoTime": ("echo_time", _SECONDS_TO_MS),
    "InversionTime": ("inversion_time", _SECONDS_TO_MS),
    "FlipAngle": ("flip_angle", 1.0),
    "KVP": ("kvp", 1.0),
}
_BIDS_TEXT = {
    "Manufacturer": "manufacturer",
    "ManufacturersModelName": "scanner_model",
    "ConvolutionKernel": "reconstruction_kernel",
    "TracerName": "tracer",
    "Units": "unit",
}


def sidecar_path(image_path: Path) -> Path:
    """The BIDS sidecar path for an image file."""
    name = image_path.name
    for ending in (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd"):
        if name.endswith(ending):
            return image_path.with_name(name[: -len(ending)] + ".json")
    return image_path.with_suffix(".json")


def metadata_from_bids(sidecar: dict[str, Any], where: str = "sidecar") -> ImageMetadata:
    """Convert a BIDS sidecar dict into :class:`ImageMetadata` (times s -> ms; dose Bq -> MBq)."""
    values: dict[str, Any] = {}
    given: dict[str, tuple[str, float]] = {}  # our field -> (BIDS key, value as written)
    for key, (name, factor) in _BIDS_NUMERIC.items():
        if sidecar.get(key) is not None:
            value = sidecar[key]
            if isinstance(value, list) and value:  # multi-echo: first echo
                value = value[0]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MetadataError(f"{where}.{key}: must be a number (got {value!r})")
            values[name] = float(value) * factor
            given[name] = (key, float(value))
    for key, name in _BIDS_TEXT.items():
        if isinstance(sidecar.get(key), str):
            values[name] = sidecar[key]
    if sidecar.get("InjectedRadioactivity") is not None:
        dose = float(sidecar["InjectedRadioactivity"])
        unit = str(sidecar.get("InjectedRadioactivityUnits", "MBq"))
        values["injected_dose"] = dose / 1e6 if unit == "Bq" else dose
    for name in ("repetition_time", "echo_time", "inversion_time"):
        high = PLAUSIBLE_RANGES[name][1]
        if name in values and values[name] > high:
            key, value = given[name]
            raise MetadataError(
                f"{where}.{key}: {value:g} s is {values[name]:.0f} ms, above the plausible {high:.0f} ms for {name}; "
                f"BIDS times are in seconds and this sidecar seems to give milliseconds (write {value / 1000:g})"
            )
    return ImageMetadata(**values)


def read_sidecar(image_path: Path) -> ImageMetadata | None:
    """Metadata from the sidecar next to ``image_path``, or None when there is none."""
    path = sidecar_path(image_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MetadataError(f"{path}: unreadable BIDS sidecar ({error})") from error
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: a BIDS sidecar must be a JSON object")
    return metadata_from_bids(data, where=str(path))
