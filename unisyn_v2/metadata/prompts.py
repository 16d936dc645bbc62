"""Structured text prompts built from metadata, and the parser that reads them back.

The format follows TUMSyn/UniSyn, e.g. ``Age: 71.0; Gender: F; Scanner: 3.0 Siemens; Modality: T2w;
Voxel size: (1.0, 1.0, 1.0); Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (4000.0, 90.0,
None, 90.0)``. CT and PET have their own parameter clause (kVp and kernel; tracer, dose, uptake time
and unit). Numbers are rounded to 3 decimals (age to 1) when a prompt is built, so prompt -> fields ->
prompt is lossless.

Missing values (style ``compact``, the default): an entry with nothing known is left out (``Age``,
``Gender``, ``Scanner``, ``Voxel size``, ``Tracer``), ``Scanner`` holds only what is known (``3.0``,
``Philips``, ``3.0 Siemens``), and inside a parameter tuple a missing value is ``None`` (the tuple is
positional). Style ``legacy`` writes ``None`` everywhere (``Age: None; Gender: None; Scanner: None
Philips``), as prompts were written before; a text encoder saved with a tokenizer from before the
styles existed is fed legacy prompts, so its conditioning does not change. The parser reads both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from unisyn_v2.metadata.fields import ImageMetadata, MetadataError, SubjectMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

_MRI_CLAUSE = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree)"
_CT_CLAUSE = "Imaging parameter kVp and kernel"
_PET_CLAUSE = "Imaging parameter dose(MBq), uptake(min), and unit"


PROMPT_STYLES = ("compact", "legacy")


class PromptError(ValueError):
    """A prompt string does not follow the structured format."""


@dataclass(frozen=True)
class ImageDescription:
    """Everything a prompt says about one image: modality, acquisition and subject."""

    modality: str
    metadata: ImageMetadata = field(default_factory=ImageMetadata)
    subject: SubjectMetadata = field(default_factory=SubjectMetadata)

    def prompt(self, style: str = "compact") -> str:
        """The structured text prompt (``style``: see the module docstring)."""
        return build_prompt(self.modality, self.metadata, self.subject, style)


def _num(value: float | None, digits: int = 3) -> str:
    return "None" if value is None else repr(round(float(value), digits))


def _text(value: str | None) -> str:
    if value is None:
        return "None"
    if any(c in value for c in ";(),") or value.strip() != value or " " in value and value.split()[0] == "None":
        raise MetadataError(f"text value {value!r} cannot contain ';', '(', ')' or ',' in a prompt")
    return value


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _scanner(field_strength: float | None, manufacturer: str | None, style: str) -> str | None:
    """The ``Scanner`` value: what is known (None: leave the entry out); legacy: ``<strength|None> <vendor|None>``."""
    vendor = _text(manufacturer)
    if style == "legacy":
        return f"{_num(field_strength)} {vendor}"
    if field_strength is None and manufacturer is None:
        return None
    if field_strength is None:  # a vendor that reads as a number would be read back as the field strength
        return f"None {vendor}" if _is_number(vendor.split()[0]) or vendor.split()[0] == "None" else vendor
    return _num(field_strength) if manufacturer is None else f"{_num(field_strength)} {vendor}"


def build_prompt(modality: str, metadata: ImageMetadata, subject: SubjectMetadata | None = None, style: str = "compact") -> str:
    """Render the papers' structured prompt; the modality's family picks the parameter clause.

    ``style="compact"`` leaves out entries with nothing known; ``"legacy"`` writes ``None`` for them.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    legacy = style == "legacy"
    subject = subject or SubjectMetadata()
    mod = get_modality(modality)
    parts = []
    if legacy or subject.age is not None:
        parts.append(f"Age: {_num(subject.age, 1)}")
    if legacy or subject.sex is not None:
        parts.append(f"Gender: {_text(subject.sex)}")
    scanner = _scanner(metadata.field_strength, metadata.manufacturer, style)
    if scanner is not None:
        parts.append(f"Scanner: {scanner}")
    parts.append(f"Modality: {mod.name}")
    tracer = metadata.tracer or mod.tracer
    if mod.family is ModalityFamily.PET and (legacy or tracer is not None):
        parts.append(f"Tracer: {_text(tracer)}")
    if legacy or metadata.voxel_size is not None:
        voxel = "None" if metadata.voxel_size is None else "(" + ", ".join(_num(v) for v in metadata.voxel_size) + ")"
        parts.append(f"Voxel size: {voxel}")
    if mod.family is ModalityFamily.MRI:
        values = [metadata.repetition_time, metadata.echo_time, metadata.inversion_time, metadata.flip_angle]
        parts.append(f"{_MRI_CLAUSE}: ({', '.join(_num(v) for v in values)})")
    elif mod.family is ModalityFamily.CT:
        parts.append(f"{_CT_CLAUSE}: ({_num(metadata.kvp)}, {_text(metadata.reconstruction_kernel)})")
    else:
        parts.append(
            f"{_PET_CLAUSE}: ({_num(metadata.injected_dose)}, {_num(metadata.uptake_time)}, {_text(metadata.unit)})"
        )
    return "; ".join(parts)


def _parse_num(token: str, where: str) -> float | None:
    token = token.strip()
    if token == "None":
        return None
    try:
        return float(token)
    except ValueError:
        raise PromptError(f"{where}: expected a number or None (got {token!r})") from None


def _parse_text(token: str) -> str | None:
    token = token.strip()
    return None if token == "None" else token


def _parse_tuple(text: str, n: int, where: str) -> list[str]:
    match = re.fullmatch(r"\((.*)\)", text.strip())
    if not match:
        raise PromptError(f"{where}: expected a parenthesised tuple (got {text!r})")
    items = [t.strip() for t in match.group(1).split(",")]
    if len(items) != n:
        raise PromptError(f"{where}: expected {n} values (got {len(items)} in {text!r})")
    return items


def parse_prompt(prompt: str) -> ImageDescription:
    """Read a structured prompt back into modality, metadata and subject fields."""
    entries: dict[str, str] = {}
    for part in prompt.strip().split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition(":")
        if not sep:
            raise PromptError(f"prompt part {part.strip()!r} is not 'Key: value'")
        entries[key.strip()] = value.strip()
    if "Modality" not in entries:
        raise PromptError(f"prompt has no 'Modality:' entry: {prompt!r}")
    mod = get_modality(entries["Modality"])
    values: dict[str, object] = {}
    scanner = entries.get("Scanner", "None None").split(None, 1)
    if scanner and (scanner[0] == "None" or _is_number(scanner[0])):  # "<strength> [vendor]", "None <vendor>"
        values["field_strength"] = _parse_num(scanner[0], "Scanner")
        values["manufacturer"] = _parse_text(scanner[1]) if len(scanner) > 1 else None
    else:  # compact: the vendor alone
        values["manufacturer"] = _parse_text(" ".join(scanner)) if scanner else None
    voxel = entries.get("Voxel size", "None")
    if voxel != "None":
        values["voxel_size"] = tuple(_parse_num(v, "Voxel size") for v in _parse_tuple(voxel, 3, "Voxel size"))
    if mod.family is ModalityFamily.MRI and _MRI_CLAUSE in entries:
        tr, te, ti, fa = (_parse_num(v, _MRI_CLAUSE) for v in _parse_tuple(entries[_MRI_CLAUSE], 4, _MRI_CLAUSE))
        values.update(repetition_time=tr, echo_time=te, inversion_time=ti, flip_angle=fa)
    elif mod.family is ModalityFamily.CT and _CT_CLAUSE in entries:
        kvp, kernel = _parse_tuple(entries[_CT_CLAUSE], 2, _CT_CLAUSE)
        values.update(kvp=_parse_num(kvp, _CT_CLAUSE), reconstruction_kernel=_parse_text(kernel))
    elif mod.family is ModalityFamily.PET:
        values["tracer"] = _parse_text(entries.get("Tracer", "None"))
        if _PET_CLAUSE in entries:
            dose, uptake, unit = _parse_tuple(entries[_PET_CLAUSE], 3, _PET_CLAUSE)
            values.update(
                injected_dose=_parse_num(dose, _PET_CLAUSE),
                uptake_time=_parse_num(uptake, _PET_CLAUSE),
                unit=_parse_text(unit),
            )
    subject = SubjectMetadata.from_dict(
        {"age": _parse_num(entries.get("Age", "None"), "Age"), "sex": _parse_text(entries.get("Gender", "None"))}
    )
    return ImageDescription(mod.name, ImageMetadata(**values), subject)  # type: ignore[arg-type]


def looks_like_prompt(text: str) -> bool:
    """True for a structured prompt (as opposed to a bare modality name)."""
    return "Modality:" in text


def with_subject(description: ImageDescription, subject: SubjectMetadata) -> ImageDescription:
    """The same image description for another subject (targets inherit the source's subject)."""
    return replace(description, subject=subject)
