"""Numbers in a prompt by their value and unit: a fixed, monotone code per numeric metadata field.

A transformer reading ``TE(ms) ... 100.0`` sees digit tokens; nothing makes TE 130 closer to TE 100
than TE 40 is (issue 16 measured cosine 0.968 for both TE 40 and TE 70, and 0.9999 for 130-200). Here
every numeric field of a prompt is read back by :func:`~unisyn_v2.metadata.prompts.parse_prompt` (so
its unit is the field's canonical one: ms, T, degrees, kV, MBq, min, mm, years), mapped to a scale on
which equal steps matter equally (log for times, field, flip angle, dose and voxel size; linear for
kVp and age), and encoded by ``K`` soft thresholds ("thermometer" units) spread evenly over the
field's range:

    theta_k = pi/2 * sigmoid((u - c_k) / w),   code_k = (cos theta_k, sin theta_k)

plus one coarse pair with theta_0 = pi/2 * clip(u, 0, 1), which carries the position on the whole
range almost linearly (so a small network can form sharp functions of it, e.g. a FLAIR's CSF null).
Each pair has norm 1 whatever the value, so two prompts with the same fields present have embeddings
of equal norm; and each theta_k moves monotonically with the value, so both the Euclidean and the
cosine distance between two prompts that differ in one field grow monotonically with the difference
(a property the tests check, and no learned layer can undo since the code has no parameters). A
missing field codes as zeros. Values beyond a field's range saturate smoothly rather than wrap.

The text encoder (:class:`unisyn_v2.networks.text_encoder.MetadataTextEncoder` with
``value_encoding``) appends this code to the transformer's embedding of the prompt with its numbers
masked (:func:`mask_numbers`), so words (modality, vendor, tracer, unit) go through the learned
transformer and values through this code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from unisyn_v2.metadata.prompts import ImageDescription, PromptError, parse_prompt

NUMBER_MASK = "#"
# a number standing alone: not glued to a letter or digit before it (T1w, AV45-PET keep their digits)
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![A-Za-z0-9])")


@dataclass(frozen=True)
class ValueField:
    """One numeric field: where it lives, its unit, and the range its code spans (in that unit)."""

    name: str
    unit: str
    low: float
    high: float
    log: bool

    def scaled(self, value: float) -> float:
        """Position of ``value`` on the field's range: 0 at ``low``, 1 at ``high`` (log or linear)."""
        if self.log:
            value = max(float(value), self.low * 1e-3)
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (float(value) - self.low) / (self.high - self.low)


# Ranges cover what scanners use (and then some), so values outside the training data still land
# on the graded part of the code. Units are those of ImageMetadata / SubjectMetadata.
VALUE_FIELDS: tuple[ValueField, ...] = (
    ValueField("age", "years", 0.0, 100.0, log=False),
    ValueField("field_strength", "T", 0.3, 11.7, log=True),
    ValueField("repetition_time", "ms", 2.0, 20000.0, log=True),
    ValueField("echo_time", "ms", 0.5, 1000.0, log=True),
    ValueField("inversion_time", "ms", 10.0, 5000.0, log=True),
    ValueField("flip_angle", "degree", 1.0, 180.0, log=True),  # log: 5 -> 10 degrees matters as much as 20 -> 40
    ValueField("voxel_size", "mm (geometric mean)", 0.2, 10.0, log=True),
    ValueField("kvp", "kV", 60.0, 160.0, log=False),
    ValueField("injected_dose", "MBq", 10.0, 1000.0, log=True),
    ValueField("uptake_time", "min", 1.0, 300.0, log=True),
)
DEFAULT_CENTRES = 32


def value_code_size(centres: int = DEFAULT_CENTRES) -> int:
    """Length of the code: two numbers per soft threshold and for the coarse pair, per field."""
    return 2 * (centres + 1) * len(VALUE_FIELDS)


def field_values(description: ImageDescription) -> dict[str, float | None]:
    """The numeric fields of a description in their canonical units (None when missing)."""
    metadata, subject = description.metadata, description.subject
    voxel = None
    if metadata.voxel_size is not None and all(v is not None and v > 0 for v in metadata.voxel_size):
        voxel = float(np.exp(np.mean(np.log(np.asarray(metadata.voxel_size, dtype=np.float64)))))
    values: dict[str, float | None] = {"age": subject.age, "voxel_size": voxel}
    for field in VALUE_FIELDS:
        if field.name not in values:
            values[field.name] = getattr(metadata, field.name)
    return values


def encode_value(field: ValueField, value: float | None, centres: int = DEFAULT_CENTRES) -> np.ndarray:
    """(2 * (centres + 1),) code of one field: cos/sin pairs of the coarse angle and of the soft
    thresholds; zeros when missing."""
    out = np.zeros(2 * (centres + 1), dtype=np.float64)
    if value is None or not math.isfinite(float(value)):
        return out
    u = field.scaled(value)
    positions = (np.arange(centres) + 0.5) / centres  # evenly spread over [0, 1]
    theta = 0.5 * math.pi / (1.0 + np.exp(-(u - positions) * centres))  # width = spacing of the thresholds
    theta = np.concatenate([[0.5 * math.pi * min(max(u, 0.0), 1.0)], theta])
    out[0::2], out[1::2] = np.cos(theta), np.sin(theta)
    return out


def value_code(description: ImageDescription, centres: int = DEFAULT_CENTRES) -> np.ndarray:
    """(value_code_size(centres),) float32 code of every numeric field of ``description``."""
    values = field_values(description)
    return np.concatenate([encode_value(f, values[f.name], centres) for f in VALUE_FIELDS]).astype(np.float32)


def prompt_value_code(prompt: str, centres: int = DEFAULT_CENTRES) -> np.ndarray:
    """The value code of a prompt string; text that is not a structured prompt has no values (zeros)."""
    try:
        description = parse_prompt(prompt)
    except (PromptError, ValueError):
        return np.zeros(value_code_size(centres), dtype=np.float32)
    return value_code(description, centres)


def mask_numbers(prompt: str) -> str:
    """The prompt with every stand-alone number replaced by ``#`` (words such as T1w keep their digits)."""
    return _NUMBER.sub(NUMBER_MASK, prompt)
