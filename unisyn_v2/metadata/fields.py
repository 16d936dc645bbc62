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
    "repetition_time": (1.0, 30000.0),
    "echo_time": (0.0, 2000.0),
    "inversion_time": (0.0, 10000.0),
    "flip_angle": (0.0, 180.0),
    "kvp": (60.0, 160.0),
    "injected_dose": (0.0, 2000.0),
    "uptake_time": (0.0, 600.0),
}
#: Fields whose lower bound itself is implausible (a flip angle or a dose of 0).
_EXCLUSIVE_LOW = {"flip_angle", "injected_dose"}
#: A time below this (ms, above 0) is what a value in seconds looks like: no brain sequence has a TE
#: under 0.5 ms or a TI under 10 ms, while in seconds TE is 0.001-0.3 and TI 0.05-3.5.
SECONDS_LIKE_BELOW = {"echo_time": 0.5, "inversion_time": 10.0}
#: A TR below this (ms) is seconds when another time of the image is, or TE >= TR; spin-echo
#: modalities never have a TR under 100 ms, so theirs is seconds below that on its own.
SECONDS_LIKE_TR_BELOW = 30.0
SPIN_ECHO_TR_BELOW = 100.0
SPIN_ECHO_MODALITIES = ("T2w", "FLAIR", "PD")
#: field -> (divisor, wrong unit, right unit): a value beyond the range that fits once divided was most
#: likely given in the wrong unit, and the message suggests the converted value.
_UNIT_SLIPS: dict[str, tuple[float, str, str]] = {
    "field_strength": (1000.0, "mT", "T"),
    "kvp": (1000.0, "V", "kV"),
    "injected_dose": (1e6, "Bq", "MBq"),
    "uptake_time": (60.0, "seconds", "min"),
    "repetition_time": (0.001, "seconds", "ms"),
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

    def problems(self, modality: str | None = None) -> list[str]:
        """Implausible values as messages 'field: rule (got value)'; empty when plausible."""
        return [f"{name}: {message}" for name, message in self.field_problems(modality)]

    def field_problems(self, modality: str | None = None) -> list[tuple[str, str]]:
        """Implausible values as (field, message): out of range, in the wrong unit (the message gives the value
        to write instead), TE not below TR. ``modality`` sharpens the seconds check of TR (spin-echo TRs)."""
        out: list[tuple[str, str]] = []
        seconds = self._seconds_like(modality)
        for name in ("repetition_time", "echo_time", "inversion_time"):
            if name in seconds:
                value = getattr(self, name)
                out.append((name, f"{value:g} looks like seconds, but {name} is in ms: write {value * 1000:g} "
                                  "(BIDS sidecars take seconds, dataset.json takes ms)"))
        if self.flip_angle is not None and 0.0 < self.flip_angle < 1.0:
            out.append(("flip_angle", f"{self.flip_angle:g} looks like radians, but flip_angle is in degrees: write "
                                      f"{math.degrees(self.flip_angle):.3g}"))
        for name, (low, high) in PLAUSIBLE_RANGES.items():
            value = getattr(self, name)
            if value is None or name in seconds:
                continue
            exclusive = name in _EXCLUSIVE_LOW
            if (value <= low if exclusive else value < low) or value > high:
                bounds = f"{'(' if exclusive else '['}{low:g}, {high:g}]"
                out.append((name, f"must be within {bounds} {FIELD_UNITS[name]} (got {value:g}){_unit_hint(name, value, low, high)}"))
        if (self.echo_time is not None and self.repetition_time is not None and self.echo_time >= self.repetition_time
                and not seconds):
            hint = ""
            if self.repetition_time < SECONDS_LIKE_TR_BELOW:
                hint = f"; a TR of {self.repetition_time:g} looks like seconds: write {self.repetition_time * 1000:g}"
            out.append(("echo_time", f"must be shorter than repetition_time (TE {self.echo_time:g} ms >= TR "
                                     f"{self.repetition_time:g} ms){hint}"))
        if self.voxel_size is not None and any(v <= 0 or v > 20 for v in self.voxel_size):
            out.append(("voxel_size", f"each entry must be within (0, 20] mm (got {list(self.voxel_size)})"))
        if self.unit is not None and self.unit not in PET_UNITS:
            out.append(("unit", f"must be one of {', '.join(PET_UNITS)} (got {self.unit!r})"))
        return out

    def _seconds_like(self, modality: str | None) -> set[str]:
        """The time fields whose values look like seconds (see :data:`SECONDS_LIKE_BELOW`)."""
        found = {name for name, below in SECONDS_LIKE_BELOW.items()
                 if (value := getattr(self, name)) is not None and 0.0 < value < below}
        tr = self.repetition_time
        if tr is not None and 0.0 < tr < SECONDS_LIKE_TR_BELOW:
            te_not_below = self.echo_time is not None and "echo_time" not in found and self.echo_time >= tr
            if found or te_not_below:
                found.add("repetition_time")
        if tr is not None and 0.0 < tr < SPIN_ECHO_TR_BELOW and modality in SPIN_ECHO_MODALITIES:
            found.add("repetition_time")
        return found

    def conflicts_with(self, other: "ImageMetadata") -> list[tuple[str, Any, Any]]:
        """Fields both give with different values, as (field, mine, other's): numbers differing by more than
        0.1 %, texts other than in letter case or an added word ('GE' and 'GE MEDICAL SYSTEMS' agree)."""
        out: list[tuple[str, Any, Any]] = []
        mine, theirs = asdict(self), asdict(other)
        for name, value in mine.items():
            other_value = theirs[name]
            if value is None or other_value is None:
                continue
            if isinstance(value, str):
                a, b = value.strip().casefold(), str(other_value).strip().casefold()
                if not (a == b or a.startswith(b + " ") or b.startswith(a + " ")):
                    out.append((name, value, other_value))
            elif isinstance(value, tuple):
                if not all(math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-6) for x, y in zip(value, other_value)):
                    out.append((name, value, other_value))
            elif not math.isclose(value, other_value, rel_tol=1e-3, abs_tol=1e-6):
                out.append((name, value, other_value))
        return out


FIELD_UNITS = {"field_strength": "T", "repetition_time": "ms", "echo_time": "ms", "inversion_time": "ms",
          "flip_angle": "degrees", "kvp": "kV", "injected_dose": "MBq", "uptake_time": "min"}


def _unit_hint(name: str, value: float, low: float, high: float) -> str:
    """'; it looks like <unit>: write <value>' when the value fits the range in the field's unit once converted."""
    slip = _UNIT_SLIPS.get(name)
    if slip is None:
        return ""
    divisor, wrong, right = slip
    converted = value / divisor
    if low < converted <= high and (value > high or divisor < 1):
        return f"; it looks like {wrong}: write {converted:g} ({right})"
    return ""


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
            hint = f"; it looks like months: write {self.age / 12:.3g} (years)" if 120.0 < self.age <= 1440.0 else ""
            return [f"age: must be within [0, 120] years (got {self.age:g}){hint}"]
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
            parsed[key] = tuple(parse_number(v, f"{where}.voxel_size") for v in value)
        else:
            parsed[key] = parse_number(value, f"{where}.{key}")
    return parsed


def parse_number(value: Any, where: str) -> float:
    """A finite JSON number (not a bool) as float; MetadataError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataError(f"{where}: must be a number (got {value!r})")
    if not math.isfinite(value):
        raise MetadataError(f"{where}: must be finite (got {value!r})")
    return float(value)
