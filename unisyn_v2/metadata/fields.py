"""Typed acquisition and subject metadata with units, parsed from JSON with errors that name the field.

Units are fixed by the field (times in ms, angles in degrees, field strength in tesla) so that prompts
and the text encoder see one scale; BIDS sidecars in seconds are converted in :mod:`.bids`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

PET_UNITS = ("SUV", "Bq/ml", "SUVR")
SEXES = ("M", "F")
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {  # field -> [low, high] in the field's unit
    "field_strength": (0.05, 11.8),
    "repetition_time": (0.5, 30000.0),
    "echo_time": (0.0, 2000.0),
    "inversion_time": (0.0, 10000.0),
    "flip_angle": (0.0, 180.0),
    "kvp": (60.0, 160.0),
    "injected_dose": (0.0, 2000.0),
    "uptake_time": (0.0, 600.0),
}


class MetadataError(ValueError):
    """A metadata value has the wrong type or an implausible value."""


@dataclass(frozen=True)
class ImageMetadata:
    """Acquisition metadata of one image; every field may be missing (None)."""

    field_strength: float | None = None  # tesla
    manufacturer: str | None = None
    scanner_model: str | None = None
    voxel_size: tuple[float, float, float] | None = None  # mm, (x, y, z)
    repetition_time: float | None = None  # ms
    echo_time: float | None = None  # ms
    inversion_time: float | None = None  # ms
    flip_angle: float | None = None  # degrees
    kvp: float | None = None  # kV (CT)
    reconstruction_kernel: str | None = None  # CT
    tracer: str | None = None  # PET
    injected_dose: float | None = None  # MBq (PET)
    uptake_time: float | None = None  # min (PET)
    unit: str | None = None  # PET: SUV | Bq/ml | SUVR

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "metadata") -> "ImageMetadata":
        """Parse and type-check a JSON object; unknown keys are errors so typos do not vanish."""
        return cls(**_parse_fields(cls, data, where))

    def to_dict(self, drop_none: bool = True) -> dict[str, Any]:
        """JSON-ready dict (voxel_size as a list)."""
        out = asdict(self)
        if out["voxel_size"] is not None:
            out["voxel_size"] = list(out["voxel_size"])
        return {k: v for k, v in out.items() if v is not None} if drop_none else out

    def merged_with(self, fallback: "ImageMetadata") -> "ImageMetadata":
        """Fill missing fields from ``fallback`` (explicit values win)."""
        mine = asdict(self)
        other = asdict(fallback)
        return ImageMetadata(**{k: (mine[k] if mine[k] is not None else other[k]) for k in mine})

    def problems(self) -> list[str]:
        """Implausible values as messages 'field: rule (got value)'; empty when plausible."""
        out: list[str] = []

        def check(name: str, low: float, high: float) -> None:
            value = getattr(self, name)
            if value is not None and not (low <= value <= high):
                out.append(f"{name}: must be within [{low}, {high}] (got {value})")

        for name, (low, high) in PLAUSIBLE_RANGES.items():
            check(name, low, high)
        if self.echo_time is not None and self.repetition_time is not None and self.echo_time >= self.repetition_time:
            out.append(f"echo_time: must be shorter than repetition_time (TE {self.echo_time} ms >= TR {self.repetition_time} ms)")
        if self.voxel_size is not None and any(v <= 0 or v > 20 for v in self.voxel_size):
            out.append(f"voxel_size: each entry must be within (0, 20] mm (got {list(self.voxel_size)})")
        if self.unit is not None and self.unit not in PET_UNITS:
            out.append(f"unit: must be one of {', '.join(PET_UNITS)} (got {self.unit!r})")
        return out


@dataclass(frozen=True)
class SubjectMetadata:
    """Subject fields shared by every image of a case."""

    age: float | None = None  # years
    sex: str | None = None  # M | F

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "subject") -> "SubjectMetadata":
        """Parse and type-check; sex is normalised to 'M'/'F'."""
        parsed = _parse_fields(cls, data, where)
        sex = parsed.get("sex")
        if sex is not None:
            normalised = {"m": "M", "male": "M", "f": "F", "female": "F"}.get(sex.strip().lower())
            if normalised is None:
                raise MetadataError(f"{where}.sex: must be M or F (got {sex!r})")
            parsed["sex"] = normalised
        return cls(**parsed)

    def to_dict(self, drop_none: bool = True) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None} if drop_none else out

    def problems(self) -> list[str]:
        """Implausible values as messages."""
        if self.age is not None and not (0.0 <= self.age <= 120.0):
            return [f"age: must be within [0, 120] years (got {self.age})"]
        return []


_STRING_FIELDS = {"manufacturer", "scanner_model", "reconstruction_kernel", "tracer", "unit", "sex"}


def _parse_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MetadataError(f"{where}: must be a JSON object (got {type(data).__name__})")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MetadataError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(names))}")
    parsed: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            parsed[key] = None
        elif key in _STRING_FIELDS:
            if not isinstance(value, str):
                raise MetadataError(f"{where}.{key}: must be a string (got {value!r})")
            parsed[key] = value
        elif key == "voxel_size":
            if not (isinstance(value, (list, tuple)) and len(value) == 3):
                raise MetadataError(f"{where}.voxel_size: must be a list of 3 numbers in mm (got {value!r})")
            parsed[key] = tuple(_number(v, f"{where}.voxel_size") for v in value)
        else:
            parsed[key] = _number(value, f"{where}.{key}")
    return parsed


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataError(f"{where}: must be a number (got {value!r})")
    if not math.isfinite(value):
        raise MetadataError(f"{where}: must be finite (got {value!r})")
    return float(value)
