"""Acquisition protocols: per-image parameters drawn from named protocol range sets per modality and field.

Every number drawn here is written to dataset.json and is exactly what the simulator uses, so a model
conditioned on metadata sees the true cause of each contrast change. Values are rounded before use.
The MR ranges come in named sets (:data:`PROTOCOL_RANGES`): ``clinical`` (the default; narrow, as
clinical sites scan) and ``wide`` (ranges over which TE, TR, TI and flip angle change the contrast).
"""

from __future__ import annotations

import logging
import math
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

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


# ------------------------------------------------------------------ MR protocol range sets
Range = tuple[float, float]


@dataclass(frozen=True)
class SequenceRanges:
    """How one MR sequence is drawn: each parameter as (low, high) in its field's unit (ms, degrees).

    A range with low == high is a fixed value and takes no random draw. ``flip_angle_choices``, when
    given, replaces ``flip_angle`` by a draw among discrete values (vendor protocols step the angle).
    FLAIR draws TI as ``csf_null_fraction`` times the TI that nulls CSF at the drawn TR and field, as
    scanners set it (one fixed TI range would mean another contrast at every TR and field).
    ``echo_margin`` keeps TE at least that many ms below TR (a gradient echo's readout and spoiler must
    fit in its TR). ``typical`` fixes the typical value of some parameters; the others are the median of
    the draw (see :func:`typical_protocol`). ``probability`` is the chance the sequence is drawn for its
    modality.
    """

    sequence: str
    probability: float
    repetition_time: Range
    echo_time: Range
    flip_angle: Range
    inversion_time: Range | None = None
    csf_null_fraction: Range | None = None
    flip_angle_choices: tuple[float, ...] = ()
    echo_margin: float = 0.0
    typical: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def ranges(self) -> dict[str, Range]:
        """parameter -> (low, high) of every drawn or fixed parameter (flip-angle choices as their span)."""
        out = {"repetition_time": self.repetition_time, "echo_time": self.echo_time, "flip_angle": self.flip_angle}
        if self.flip_angle_choices:
            out["flip_angle"] = (min(self.flip_angle_choices), max(self.flip_angle_choices))
        if self.inversion_time is not None:
            out["inversion_time"] = self.inversion_time
        if self.csf_null_fraction is not None:
            out["csf_null_fraction"] = self.csf_null_fraction
        return out


@dataclass(frozen=True)
class ProtocolRangeSet:
    """A named set of MR protocol ranges: per modality the sequences it draws, with their probabilities.

    ``mri`` maps a modality (T1CE uses T1w's entry) to its sequences; ``low_field`` replaces an entry
    below 2 T. Parameters named in ``log_uniform`` are drawn uniformly on a log scale, the others
    uniformly. CT and PET draws (kVp, kernel, dose, uptake time) are the same in every set.
    """

    name: str
    summary: str
    mri: Mapping[str, tuple[SequenceRanges, ...]]
    low_field: Mapping[str, tuple[SequenceRanges, ...]] = dataclasses.field(default_factory=dict)
    log_uniform: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for table in (self.mri, self.low_field):
            for modality, sequences in table.items():
                where = f"protocol ranges {self.name!r}, {modality}"
                if not sequences or abs(sum(s.probability for s in sequences) - 1.0) > 1e-9:
                    raise ValueError(f"{where}: sequence probabilities must sum to 1")
                for s in sequences:
                    _check_sequence(s, f"{where} {s.sequence}")

    def sequences(self, modality_name: str, field_strength: float) -> tuple[SequenceRanges, ...]:
        """The sequences drawn for ``modality_name`` at ``field_strength`` (tesla)."""
        name = "T1w" if modality_name == "T1CE" else modality_name
        table = self.low_field if field_strength < 2.0 and name in self.low_field else self.mri
        if name not in table:
            raise ValueError(f"no MR protocol for modality {modality_name!r}")
        return table[name]

    def sequence(self, modality_name: str, field_strength: float, sequence: str | None = None) -> SequenceRanges:
        """The named sequence of a modality, or its most probable one."""
        sequences = self.sequences(modality_name, field_strength)
        if sequence is None:
            return max(sequences, key=lambda s: s.probability)
        for s in sequences:
            if s.sequence == sequence:
                return s
        raise ValueError(f"protocol ranges {self.name!r} have no sequence {sequence!r} for {modality_name} "
                         f"(known: {', '.join(s.sequence for s in sequences)})")


def _check_sequence(s: SequenceRanges, where: str) -> None:
    """Ranges that cannot give an inconsistent protocol (TE < TR, TI + TE < TR) at any draw."""
    for name, (low, high) in s.ranges().items():
        if not 0.0 < low <= high:
            raise ValueError(f"{where}: {name} range must satisfy 0 < low <= high (got {low}, {high})")
    if s.echo_time[0] > s.repetition_time[0] - s.echo_margin or s.echo_time[0] >= s.repetition_time[0]:
        raise ValueError(f"{where}: echo_time low must stay within the shortest repetition_time minus the echo margin")
    if s.inversion_time is not None and s.csf_null_fraction is not None:
        raise ValueError(f"{where}: give inversion_time or csf_null_fraction, not both")
    if s.inversion_time is not None and s.inversion_time[1] + s.echo_time[1] >= s.repetition_time[0]:
        raise ValueError(f"{where}: inversion_time + echo_time must stay below the shortest repetition_time")
    if s.flip_angle[1] > 180.0 or any(not 0.0 < a <= 180.0 for a in s.flip_angle_choices):
        raise ValueError(f"{where}: flip angles must lie in (0, 180] degrees")


def _digits(parameter: str, high: float) -> int:
    """Decimals a drawn value keeps: about what a protocol sheet shows (0.1 ms for short times)."""
    if parameter == "repetition_time":
        return 1 if high < 100.0 else 0
    if parameter == "echo_time":
        return 2 if high < 10.0 else 1
    return 0


_SPIN_ECHO = "spin echo"
_GRE = "spoiled gradient echo"

# clinical: the typical-protocol table of common 1.5 T / 3 T brain protocols (ADNI, BraTS, IXI-like
# sites): MPRAGE (Mugler & Brookeman, MRM 1990), spoiled GRE, turbo spin echo, 2D FLAIR at the CSF null.
# Narrow ranges: realistic data, but a parameter barely changes the image within them. These are the
# draws every dataset made before range sets existed; they must not change.
CLINICAL = ProtocolRangeSet(
    name="clinical",
    summary="narrow clinical ranges (T2w TE 80-120 ms, FLAIR TI within 3 % of the CSF null, MPRAGE TI 850-1100 ms)",
    mri={
        "T1w": (SequenceRanges("MPRAGE", 0.8, (2000.0, 2500.0), (2.0, 3.0), (8.0, 9.0), inversion_time=(850.0, 1000.0),
                               flip_angle_choices=(8.0, 9.0),
                               typical={"repetition_time": 2300.0, "echo_time": 2.5, "inversion_time": 900.0, "flip_angle": 9.0}),
                SequenceRanges(_GRE, 0.2, (15.0, 25.0), (4.0, 6.0), (20.0, 30.0))),
        "T2w": (SequenceRanges(_SPIN_ECHO, 1.0, (3000.0, 6000.0), (80.0, 120.0), (90.0, 90.0)),),
        "PD": (SequenceRanges(_SPIN_ECHO, 1.0, (2000.0, 4000.0), (10.0, 30.0), (90.0, 90.0)),),
        # 2D turbo inversion recovery. 3D variable-flip-angle FLAIR (TE 300-400 ms) is not drawn: its
        # nominal TE does not enter a single-exponential decay, so the equation would misstate it.
        "FLAIR": (SequenceRanges("inversion recovery", 1.0, (8000.0, 11000.0), (80.0, 140.0), (90.0, 90.0),
                                 csf_null_fraction=(0.97, 1.03), typical={"repetition_time": 9000.0}),),
        # the echo must be read out before the next excitation: TE stays at least 5 ms below TR
        "T2star": (SequenceRanges(_GRE, 1.0, (20.0, 50.0), (15.0, 25.0), (15.0, 15.0), echo_margin=5.0),),
        "SWI": (SequenceRanges(_GRE, 1.0, (20.0, 50.0), (15.0, 25.0), (15.0, 15.0), echo_margin=5.0),),
    },
    low_field={
        "T1w": (SequenceRanges("MPRAGE", 0.8, (2100.0, 2700.0), (3.0, 4.0), (7.0, 9.0), inversion_time=(950.0, 1100.0),
                               flip_angle_choices=(7.0, 8.0, 9.0),
                               typical={"repetition_time": 2400.0, "echo_time": 3.5, "inversion_time": 1000.0, "flip_angle": 8.0}),
                SequenceRanges(_GRE, 0.2, (15.0, 25.0), (4.0, 6.0), (20.0, 30.0))),
    },
)

# wide: ranges over which each parameter changes the contrast, so that a model can learn what it does.
# T2w TE 30-250 ms runs from PD-like (GM brighter than CSF) to heavily T2-weighted (CSF/GM ratio over
# 10); PD TE 10-40 ms; FLAIR TI 0.6-1.4x the CSF null leaves CSF bright on both sides of the null;
# MPRAGE TI 400-1400 ms moves GM/WM nulling and contrast; spoiled GRE flip 5-40 degrees runs from PD-
# to T1-weighting (the WM Ernst angle at TR 20 ms is about 11 degrees). Same ranges at 1.5 and 3 T.
# Times and angles are drawn log-uniformly: contrast depends on ratios (TE/T2, TR/T1, TI/T1) and the
# tissues' T2 span 70-2000 ms, so equal steps in log TE change the contrast by similar amounts across
# the range; a uniform TE draw over 30-250 ms would put 14 % of images below 60 ms, log-uniform 33 %.
# It also matches a log-scale encoding of the values. The FLAIR null fraction stays uniform, symmetric
# about the null (near it the CSF signal is about linear in TI).
WIDE = ProtocolRangeSet(
    name="wide",
    summary="wide ranges in which the parameters matter (T2w TE 30-250 ms, TR 1500-8000 ms; FLAIR TI 0.6-1.4x "
            "the CSF null; MPRAGE TI 400-1400 ms; spoiled GRE TR 10-40 ms, flip 5-40 degrees), log-uniform",
    mri={
        "T1w": (SequenceRanges("MPRAGE", 0.6, (2000.0, 2700.0), (2.0, 4.0), (7.0, 12.0), inversion_time=(400.0, 1400.0)),
                SequenceRanges(_GRE, 0.4, (10.0, 40.0), (3.0, 6.0), (5.0, 40.0), echo_margin=3.0)),
        "T2w": (SequenceRanges(_SPIN_ECHO, 1.0, (1500.0, 8000.0), (30.0, 250.0), (90.0, 90.0)),),
        "PD": (SequenceRanges(_SPIN_ECHO, 1.0, (2000.0, 4000.0), (10.0, 40.0), (90.0, 90.0)),),
        "FLAIR": (SequenceRanges("inversion recovery", 1.0, (8000.0, 11000.0), (80.0, 140.0), (90.0, 90.0),
                                 csf_null_fraction=(0.6, 1.4)),),
        "T2star": (SequenceRanges(_GRE, 1.0, (25.0, 60.0), (5.0, 40.0), (10.0, 20.0), echo_margin=5.0),),
        "SWI": (SequenceRanges(_GRE, 1.0, (25.0, 60.0), (5.0, 40.0), (10.0, 20.0), echo_margin=5.0),),
    },
    log_uniform=frozenset({"repetition_time", "echo_time", "inversion_time", "flip_angle"}),
)

PROTOCOL_RANGES: dict[str, ProtocolRangeSet] = {CLINICAL.name: CLINICAL, WIDE.name: WIDE}
DEFAULT_PROTOCOL_RANGES = CLINICAL.name


def get_protocol_ranges(ranges: str | ProtocolRangeSet) -> ProtocolRangeSet:
    """A range set by name (see :data:`PROTOCOL_RANGES`), or the set itself."""
    if isinstance(ranges, ProtocolRangeSet):
        return ranges
    if ranges not in PROTOCOL_RANGES:
        raise ValueError(f"unknown protocol ranges {ranges!r}; known: {', '.join(PROTOCOL_RANGES)}")
    return PROTOCOL_RANGES[ranges]


def _draw_value(rng: np.random.Generator, bounds: Range, log: bool, fixed: bool | None = None) -> float:
    """One value in [low, high]: uniform or log-uniform; no draw when ``fixed`` (default: low == high)."""
    low, high = bounds
    if (low == high) if fixed is None else fixed:
        return float(low)
    if log:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def _draw_sequence(s: SequenceRanges, rng: np.random.Generator, field_strength: float,
                   log_uniform: frozenset[str]) -> dict[str, float]:
    """TR, TE, TI, flip angle in this order (the order fixes which random numbers each one gets)."""
    tr = round(_draw_value(rng, s.repetition_time, "repetition_time" in log_uniform),
               _digits("repetition_time", s.repetition_time[1]))
    te_bounds = (s.echo_time[0], min(s.echo_time[1], tr - s.echo_margin))
    # a TE range narrowed to one value by the margin is still a draw: only a fixed range takes none
    te = round(_draw_value(rng, te_bounds, "echo_time" in log_uniform, fixed=s.echo_time[0] == s.echo_time[1]),
               _digits("echo_time", s.echo_time[1]))
    out = {"repetition_time": tr, "echo_time": te}
    if s.inversion_time is not None:
        out["inversion_time"] = round(_draw_value(rng, s.inversion_time, "inversion_time" in log_uniform),
                                      _digits("inversion_time", s.inversion_time[1]))
    elif s.csf_null_fraction is not None:
        fraction = _draw_value(rng, s.csf_null_fraction, "csf_null_fraction" in log_uniform)
        out["inversion_time"] = round(flair_null_ti(tr, field_strength) * fraction, 0)
    if s.flip_angle_choices:
        out["flip_angle"] = float(rng.choice(s.flip_angle_choices))
    else:
        out["flip_angle"] = round(_draw_value(rng, s.flip_angle, "flip_angle" in log_uniform),
                                  _digits("flip_angle", s.flip_angle[1]))
    return out


def _mri_timing(name: str, rng: np.random.Generator, field_strength: float, ranges: ProtocolRangeSet) -> dict[str, float]:
    """TR/TE/TI/flip for one MR image: a sequence (one random number when there is a choice), then its draw."""
    sequences = ranges.sequences(name, field_strength)
    chosen = sequences[-1]
    if len(sequences) > 1:
        u, cumulative = rng.random(), 0.0
        for s in sequences:
            cumulative += s.probability
            if u < cumulative:
                chosen = s
                break
    return _draw_sequence(chosen, rng, field_strength, ranges.log_uniform)


def _median(bounds: Range, log: bool) -> float:
    low, high = bounds
    return math.sqrt(low * high) if log else 0.5 * (low + high)


def typical_timing(s: SequenceRanges, field_strength: float, log_uniform: frozenset[str] = frozenset()) -> dict[str, float]:
    """TR/TE/TI/flip of a sequence's typical protocol: its ``typical`` values, else the draw's median.

    The median is the geometric mid-range for log-uniform draws and the arithmetic one otherwise; TE is
    bounded by the typical TR as in the draw, and FLAIR's TI is the median fraction of the CSF null.
    """
    fixed = dict(s.typical)
    tr = fixed.get("repetition_time", round(_median(s.repetition_time, "repetition_time" in log_uniform),
                                            _digits("repetition_time", s.repetition_time[1])))
    te_bounds = (s.echo_time[0], min(s.echo_time[1], tr - s.echo_margin))
    te = fixed.get("echo_time", round(_median(te_bounds, "echo_time" in log_uniform), _digits("echo_time", s.echo_time[1])))
    out = {"repetition_time": float(tr), "echo_time": float(te)}
    if s.inversion_time is not None:
        out["inversion_time"] = float(fixed.get("inversion_time", round(
            _median(s.inversion_time, "inversion_time" in log_uniform), _digits("inversion_time", s.inversion_time[1]))))
    elif s.csf_null_fraction is not None:
        fraction = _median(s.csf_null_fraction, "csf_null_fraction" in log_uniform)
        out["inversion_time"] = float(fixed.get("inversion_time", round(flair_null_ti(tr, field_strength) * fraction, 0)))
    if "flip_angle" in fixed:
        out["flip_angle"] = float(fixed["flip_angle"])
    elif s.flip_angle_choices:
        out["flip_angle"] = float(np.median(s.flip_angle_choices))
    else:
        out["flip_angle"] = float(round(_median(s.flip_angle, "flip_angle" in log_uniform), _digits("flip_angle", s.flip_angle[1])))
    return out


def protocol_problems(modality_name: str, metadata: ImageMetadata) -> list[str]:
    """Why an MR protocol cannot be acquired or simulated as given ('field: rule (got ...)'); empty when fine.

    TE < TR; for inversion recovery TI + TE < TR (the echo follows the excitation that follows the
    inversion); flip angle in (0, 180]; spin-echo and T2*-weighted modalities carry no TI (the phantom
    would ignore it). CT and PET give no problems here.
    """
    modality = get_modality(modality_name)
    if modality.family is not ModalityFamily.MRI:
        return []
    m = metadata
    out: list[str] = []
    for name in ("repetition_time", "echo_time", "inversion_time"):
        value = getattr(m, name)
        if value is not None and value <= 0.0:
            out.append(f"{name}: must be positive (got {value})")
    if m.echo_time is not None and m.repetition_time is not None and m.echo_time >= m.repetition_time:
        out.append(f"echo_time: must be shorter than repetition_time (TE {m.echo_time} ms >= TR {m.repetition_time} ms)")
    if m.inversion_time is not None:
        if modality.name not in ("T1w", "T1CE", "FLAIR"):
            out.append(f"inversion_time: {modality.name} has no inversion pulse; remove it (got {m.inversion_time})")
        elif m.repetition_time is not None and m.inversion_time + (m.echo_time or 0.0) >= m.repetition_time:
            out.append(f"inversion_time: TI + TE must be shorter than TR (TI {m.inversion_time} + TE {m.echo_time} ms "
                       f">= TR {m.repetition_time} ms)")
    if m.flip_angle is not None and not 0.0 < m.flip_angle <= 180.0:
        out.append(f"flip_angle: must lie in (0, 180] degrees (got {m.flip_angle})")
    return out


def draw_protocol(modality_name: str, rng: np.random.Generator, voxel_size: tuple[float, float, float] | None = None,
                  field_strength: float | None = None, manufacturer: str | None = None,
                  scanner_model: str | None = None, ranges: str | ProtocolRangeSet = DEFAULT_PROTOCOL_RANGES) -> ImageMetadata:
    """Acquisition metadata for one image; scanner fields left None are drawn (session sharing them).

    ``ranges`` names the protocol range set of the MR timing (see :data:`PROTOCOL_RANGES`).
    """
    modality = get_modality(modality_name)
    if manufacturer is None:
        manufacturer = str(rng.choice(MANUFACTURERS))
    vox = None if voxel_size is None else tuple(round(float(v), 4) for v in voxel_size)
    if modality.family is ModalityFamily.MRI:
        field = float(field_strength if field_strength is not None else rng.choice(FIELD_STRENGTHS, p=[0.4, 0.6]))
        models = MR_MODELS.get((manufacturer, field), ("unknown",))
        model = scanner_model or str(rng.choice(models))
        return ImageMetadata(field_strength=field, manufacturer=manufacturer, scanner_model=model, voxel_size=vox,
                             **_mri_timing(modality.name, rng, field, get_protocol_ranges(ranges)))
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


def typical_protocol(modality_name: str, field_strength: float = 3.0, ranges: str | ProtocolRangeSet = DEFAULT_PROTOCOL_RANGES,
                     sequence: str | None = None) -> ImageMetadata:
    """The typical protocol of a range set: what an image of ``modality_name`` looks like when nothing is said.

    MRI: the most probable sequence (or ``sequence``) at its typical values (:func:`typical_timing`);
    for ``clinical`` the classic protocol-table values. CT and PET: mid-range values, the same in every set.
    """
    modality = get_modality(modality_name)
    field_strength = float(field_strength)
    if modality.family is ModalityFamily.MRI:
        range_set = get_protocol_ranges(ranges)
        s = range_set.sequence(modality.name, field_strength, sequence)
        return ImageMetadata(field_strength=field_strength, **typical_timing(s, field_strength, range_set.log_uniform))
    if modality.family is ModalityFamily.CT:
        return ImageMetadata(kvp=120.0)
    tracer = modality.tracer or "FDG"
    return ImageMetadata(tracer=tracer, unit=PET_UNITS[tracer], injected_dose=sum(PET_DOSE[tracer]) / 2.0,
                         uptake_time=sum(PET_UPTAKE[tracer]) / 2.0)


def nominal_protocol(modality_name: str, field_strength: float = 3.0) -> ImageMetadata:
    """Mid-range protocol used to fill fields a caller leaves out of the metadata it simulates (clinical set)."""
    return typical_protocol(modality_name, field_strength, CLINICAL)


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
