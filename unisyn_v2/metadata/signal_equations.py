"""MR signal equations: one source of physics for the phantom (numpy) and the qMRI head (torch).

Every equation takes proton density ``pd``, relaxation times in ms and the sequence parameters (TR, TE,
TI in ms, flip angle in degrees) and returns the magnitude signal in PD units. The arrays may be numpy
arrays (the phantom: per-tissue values, float sequence parameters) or torch tensors (the qMRI head:
per-voxel maps, per-item parameters broadcast against them); each function computes with the library
of its inputs, so the phantom and the network render with the same lines of code.

:func:`sequence_for` names the sequence that images a modality with a given protocol (the phantom's
rules: T2w/PD spin echo, FLAIR inversion recovery, T1w MPRAGE unless it is a short-TR spoiled gradient
echo, T2star/SWI spoiled gradient echo), and :data:`TYPICAL_PROTOCOLS` documents the values a missing
parameter falls back to (the clinical 3 T protocol table, ``unisyn_v2.phantom.protocols.CLINICAL``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

SPIN_ECHO = "spin_echo"
INVERSION_RECOVERY = "inversion_recovery"
SPOILED_GRE = "spoiled_gre"
MPRAGE = "mprage"
SEQUENCES: tuple[str, ...] = (SPIN_ECHO, INVERSION_RECOVERY, SPOILED_GRE, MPRAGE)
PROTOCOL_FIELDS: tuple[str, ...] = ("field_strength", "repetition_time", "echo_time", "inversion_time", "flip_angle")

MPRAGE_PULSES_TO_CENTRE = 64  # readout pulses before the k-space centre (128-pulse train)
MPRAGE_INVERSION_EFFICIENCY = 0.96  # adiabatic inversion (Deichmann et al., NeuroImage 2000)
GRE_TR_LIMIT_MS = 100.0  # a T1w given with TR below this and no TI is a spoiled GRE, otherwise an MPRAGE

# Typical protocols (3 T) that fill parameters a prompt leaves out, with a warning where a model uses them:
# the clinical protocol table the phantom's `clinical` ranges describe (MPRAGE TR 2300 / TE 2.5 / TI 900 ms,
# 9 degrees; spoiled GRE TR 20 / TE 5 ms, 25 degrees; T2w TSE TR 4500 / TE 100 ms; PD TR 3000 / TE 20 ms;
# 2D FLAIR TR 9000 / TE 110 ms with TI 2450 ms, the CSF null at 3 T; T2*/SWI TR 35 / TE 20 ms, 15 degrees).
TYPICAL_PROTOCOLS: dict[str, dict[str, float]] = {
    "T1w": {"field_strength": 3.0, "repetition_time": 2300.0, "echo_time": 2.5, "inversion_time": 900.0, "flip_angle": 9.0},
    "T1CE": {"field_strength": 3.0, "repetition_time": 2300.0, "echo_time": 2.5, "inversion_time": 900.0, "flip_angle": 9.0},
    "T2w": {"field_strength": 3.0, "repetition_time": 4500.0, "echo_time": 100.0, "flip_angle": 90.0},
    "PD": {"field_strength": 3.0, "repetition_time": 3000.0, "echo_time": 20.0, "flip_angle": 90.0},
    "FLAIR": {"field_strength": 3.0, "repetition_time": 9000.0, "echo_time": 110.0, "inversion_time": 2450.0, "flip_angle": 90.0},
    "T2star": {"field_strength": 3.0, "repetition_time": 35.0, "echo_time": 20.0, "flip_angle": 15.0},
    "SWI": {"field_strength": 3.0, "repetition_time": 35.0, "echo_time": 20.0, "flip_angle": 15.0},
}
TYPICAL_GRE: dict[str, float] = {"field_strength": 3.0, "repetition_time": 20.0, "echo_time": 5.0, "flip_angle": 25.0}


def _is_torch(*values: Any) -> bool:
    return any(type(v).__module__.startswith("torch") for v in values)


def _namespace(*values: Any) -> tuple[Any, list[Any]]:
    """(numpy or torch, the values) with python numbers turned into tensors when any value is a tensor."""
    if not _is_torch(*values):
        return np, list(values)
    import torch

    reference = next(v for v in values if isinstance(v, torch.Tensor))
    return torch, [v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=reference.dtype, device=reference.device)
                   for v in values]


def spin_echo(pd: Any, t1: Any, t2: Any, tr: Any, te: Any) -> Any:
    """S = PD (1 - exp(-TR/T1)) exp(-TE/T2) (T2w, PD)."""
    xp, (pd, t1, t2, tr, te) = _namespace(pd, t1, t2, tr, te)
    return pd * (1.0 - xp.exp(-tr / t1)) * xp.exp(-te / t2)


def inversion_recovery(pd: Any, t1: Any, t2: Any, tr: Any, te: Any, ti: Any) -> Any:
    """S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2) (FLAIR, STIR), magnitude reconstruction."""
    xp, (pd, t1, t2, tr, te, ti) = _namespace(pd, t1, t2, tr, te, ti)
    return pd * xp.abs(1.0 - 2.0 * xp.exp(-ti / t1) + xp.exp(-tr / t1)) * xp.exp(-te / t2)


def spoiled_gre(pd: Any, t1: Any, t2s: Any, tr: Any, te: Any, flip_deg: Any) -> Any:
    """S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*) (FLASH/SPGR, T2*w, SWI magnitude)."""
    xp, (pd, t1, t2s, tr, te, flip_deg) = _namespace(pd, t1, t2s, tr, te, flip_deg)
    a = xp.deg2rad(flip_deg)
    e1 = xp.exp(-tr / t1)
    return pd * xp.sin(a) * (1.0 - e1) / (1.0 - xp.cos(a) * e1) * xp.exp(-te / t2s)


def _mprage_timing(tr: Any, te: Any, ti: Any) -> tuple[Any, Any, Any, Any]:
    """(readout spacing, pulses to the centre n, inversion -> first pulse, last pulse -> next inversion)."""
    spacing = 2.0 * te + 2.5  # ms between readout pulses
    if not _is_torch(tr, te, ti) and all(np.ndim(v) == 0 for v in (tr, te, ti)):
        n = max(0, min(MPRAGE_PULSES_TO_CENTRE, int(0.9 * ti / spacing), int((tr - ti) / spacing)))
        t_start = ti - n * spacing
        return spacing, n, t_start, max(tr - t_start - 2 * n * spacing, 0.0)
    xp, (tr, ti, spacing) = _namespace(tr, ti, spacing)
    fit = xp.minimum(xp.floor(0.9 * ti / spacing), xp.floor((tr - ti) / spacing))
    n = xp.clip(fit, 0, MPRAGE_PULSES_TO_CENTRE)  # floor = the scalar path's int() wherever n >= 0
    t_start = ti - n * spacing
    t_delay = tr - t_start - 2 * n * spacing
    return spacing, n, t_start, xp.where(t_delay > 0.0, t_delay, 0.0 * t_delay)


def mprage(pd: Any, t1: Any, t2s: Any, tr: Any, te: Any, ti: Any, flip_deg: Any) -> Any:
    """Inversion-prepared gradient echo (MPRAGE) in its steady state over repeated inversions.

    Per TR: inversion (efficiency 0.96), recovery until the readout train starts, a train of 2n
    spoiled pulses spaced by ``2 TE + 2.5`` ms that drives Mz towards the GRE steady state, and
    recovery until the next inversion. TI is measured to the k-space centre (pulse n; Siemens
    convention) and the signal is sampled there (Deichmann et al., NeuroImage 2000;12:112).
    """
    spacing, n, t_start, t_delay = _mprage_timing(tr, te, ti)
    xp, (pd, t1, t2s, te, flip_deg, spacing, n, t_start, t_delay) = _namespace(
        pd, t1, t2s, te, flip_deg, spacing, n, t_start, t_delay)
    a = xp.deg2rad(flip_deg)
    e_start, e_delay = xp.exp(-t_start / t1), xp.exp(-t_delay / t1)
    c = xp.cos(a) * xp.exp(-spacing / t1)  # per-pulse decay of the deviation from steady state
    m_ss = (1.0 - xp.exp(-spacing / t1)) / (1.0 - c)
    # Mz before the inversion, x, is the fixed point of one TR: x = A - B x.
    a_term = (1.0 - e_delay) + e_delay * (m_ss + ((1.0 - e_start) - m_ss) * c ** (2 * n))
    b_term = e_delay * MPRAGE_INVERSION_EFFICIENCY * e_start * c ** (2 * n)
    before_inversion = a_term / (1.0 + b_term)
    m_start = (1.0 - e_start) - MPRAGE_INVERSION_EFFICIENCY * before_inversion * e_start
    m_centre = m_ss + (m_start - m_ss) * c ** n
    return pd * xp.sin(a) * xp.abs(m_centre) * xp.exp(-te / t2s)


def sequence_for(modality: str, repetition_time: float | None = None, inversion_time: float | None = None) -> str | None:
    """The sequence imaging ``modality`` with this TR/TI (None: not an MR modality with a signal model)."""
    if modality in ("T2w", "PD"):
        return SPIN_ECHO
    if modality == "FLAIR":
        return INVERSION_RECOVERY
    if modality in ("T1w", "T1CE"):
        if inversion_time is None and repetition_time is not None and repetition_time < GRE_TR_LIMIT_MS:
            return SPOILED_GRE  # a spoiled GRE given without TI stays a spoiled GRE
        return MPRAGE
    if modality in ("T2star", "SWI"):
        return SPOILED_GRE
    return None


def filled_protocol(modality: str, given: Mapping[str, float | None]) -> tuple[str, dict[str, float], list[str]]:
    """(sequence, field/TR/TE/TI/flip with the typical values filling gaps, the names of the fields filled).

    ``given`` maps :data:`PROTOCOL_FIELDS` to values (missing or None: not given). The fallback is the
    sequence's row of :data:`TYPICAL_PROTOCOLS` (a T1w spoiled GRE: :data:`TYPICAL_GRE`); a sequence
    that needs no TI gets TI 0, which its equation does not read.
    """
    sequence = sequence_for(modality, given.get("repetition_time"), given.get("inversion_time"))
    if sequence is None:
        raise ValueError(f"modality {modality!r}: no MR signal model (known: {', '.join(TYPICAL_PROTOCOLS)})")
    typical = TYPICAL_GRE if sequence == SPOILED_GRE and modality in ("T1w", "T1CE") else TYPICAL_PROTOCOLS[modality]
    needed = [f for f in PROTOCOL_FIELDS if f != "inversion_time" or sequence in (INVERSION_RECOVERY, MPRAGE)]
    out: dict[str, float] = {"inversion_time": 0.0}
    filled: list[str] = []
    for name in needed:
        value = given.get(name)
        if value is None or not math.isfinite(float(value)):
            value = typical[name]
            filled.append(name)
        out[name] = float(value)
    return sequence, out, filled


def render(sequence: str, pd: Any, t1: Any, t2: Any, t2s: Any, tr: Any, te: Any, ti: Any, flip_deg: Any) -> Any:
    """The signal of ``sequence`` (one of :data:`SEQUENCES`) from PD, T1, T2, T2* and TR/TE/TI/flip."""
    if sequence == SPIN_ECHO:
        return spin_echo(pd, t1, t2, tr, te)
    if sequence == INVERSION_RECOVERY:
        return inversion_recovery(pd, t1, t2, tr, te, ti)
    if sequence == SPOILED_GRE:
        return spoiled_gre(pd, t1, t2s, tr, te, flip_deg)
    if sequence == MPRAGE:
        return mprage(pd, t1, t2s, tr, te, ti, flip_deg)
    raise ValueError(f"unknown sequence {sequence!r}; known: {', '.join(SEQUENCES)}")
