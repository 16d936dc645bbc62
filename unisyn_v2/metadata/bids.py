"""BIDS JSON sidecars as a metadata source, with the unit conversions BIDS needs (seconds -> ms).

A sidecar sits next to its image with the same stem (``sub-01_T1w.nii.gz`` -> ``sub-01_T1w.json``).
Only fields the dataset.json leaves empty are taken from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unisyn_v2.metadata.fields import PLAUSIBLE_RANGES, ImageMetadata, MetadataError, parse_number

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
#: our field -> the BIDS key it comes from (for messages)
BIDS_KEY_OF = {
    **{name: key for key, (name, _factor) in _BIDS_NUMERIC.items()},
    **{name: key for key, name in _BIDS_TEXT.items()},
    "injected_dose": "InjectedRadioactivity",
}


class DuplicateKeyError(ValueError):
    """A JSON object gives one key twice (JSON readers silently keep the last)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = value
    return seen


def load_json_file(path: Path) -> Any:
    """Parse a user-written JSON file strictly, with one-line errors naming the file.

    Why not ``json.loads(read_text())``: a UTF-8 byte-order mark (Windows editors write one) is accepted,
    while a key given twice in one object (the first value would vanish silently) and text that is not
    UTF-8 are errors. NaN/Infinity literals are parsed, so the field checks name the field.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
                         "save it as UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    except DuplicateKeyError as error:
        raise ValueError(f"{path}: key {str(error)!r} appears twice in one object; JSON keeps only the last value, "
                         "so remove one") from None


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
            values[name] = parse_number(value, f"{where}.{key}") * factor
            given[name] = (key, float(value))
    for key, name in _BIDS_TEXT.items():
        if isinstance(sidecar.get(key), str):
            values[name] = sidecar[key]
    if sidecar.get("InjectedRadioactivity") is not None:
        dose = parse_number(sidecar["InjectedRadioactivity"], f"{where}.InjectedRadioactivity")
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
        data = load_json_file(path)
    except OSError as error:
        raise MetadataError(f"{path}: unreadable BIDS sidecar ({error})") from error
    except ValueError as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise MetadataError(f"{path}: unreadable BIDS sidecar ({reason})") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: a BIDS sidecar must be a JSON object")
    return metadata_from_bids(data, where=str(path))
