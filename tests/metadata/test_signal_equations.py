"""The shared MR signal equations: closed-form values per sequence, numpy and torch alike, one source for the phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unisyn_v2.metadata import signal_equations as se
from unisyn_v2.phantom import mri as phantom_mri


def test_spin_echo_closed_form() -> None:
    value = se.spin_echo(np.array([0.8]), np.array([1000.0]), np.array([100.0]), 2000.0, 50.0)
    assert value[0] == pytest.approx(0.8 * (1.0 - math.exp(-2.0)) * math.exp(-0.5), rel=1e-12)


def test_inversion_recovery_closed_form_and_null() -> None:
    value = se.inversion_recovery(np.array([1.0]), np.array([4000.0]), np.array([2000.0]), 9000.0, 100.0, 2500.0)
    expected = abs(1.0 - 2.0 * math.exp(-2500.0 / 4000.0) + math.exp(-9000.0 / 4000.0)) * math.exp(-100.0 / 2000.0)
    assert value[0] == pytest.approx(expected, rel=1e-12)
    # full recovery (TR -> infinity): the signal vanishes at TI = T1 ln 2 and is PD exp(-TE/T2) at long TI
    t1 = 1200.0
    null = se.inversion_recovery(np.array([1.0]), np.array([t1]), np.array([80.0]), 1e9, 10.0, t1 * math.log(2.0))
    assert abs(null[0]) < 1e-12
    late = se.inversion_recovery(np.array([1.0]), np.array([t1]), np.array([80.0]), 1e9, 10.0, 1e8)
    assert late[0] == pytest.approx(math.exp(-10.0 / 80.0), rel=1e-12)


def test_spoiled_gre_ernst_angle() -> None:
    tr, t1, te, t2s = 20.0, 1000.0, 5.0, 50.0
    e1 = math.exp(-tr / t1)
    ernst = math.degrees(math.acos(e1))
    value = se.spoiled_gre(np.array([1.0]), np.array([t1]), np.array([t2s]), tr, te, ernst)[0]
    assert value == pytest.approx(math.sqrt((1.0 - e1) / (1.0 + e1)) * math.exp(-te / t2s), rel=1e-12)
    angles = np.linspace(1.0, 60.0, 300)
    others = [se.spoiled_gre(np.array([1.0]), np.array([t1]), np.array([t2s]), tr, te, a)[0] for a in angles]
    assert max(others) <= value + 1e-12  # the Ernst angle maximises the signal


def test_mprage_small_flip_is_inversion_recovery_with_partial_inversion() -> None:
    """Flip -> 0: the readout train does not disturb Mz, so S / sin(a) is the steady-state IR magnetisation."""
    t1, t2s, tr, te, ti = 1100.0, 50.0, 2300.0, 2.5, 900.0
    flip = 1e-4
    value = se.mprage(np.array([1.0]), np.array([t1]), np.array([t2s]), tr, te, ti, flip)[0]
    eta = se.MPRAGE_INVERSION_EFFICIENCY
    e_tr = math.exp(-tr / t1)
    before = (1.0 - e_tr) / (1.0 + eta * e_tr)
    expected = abs(1.0 - (1.0 + eta * before) * math.exp(-ti / t1)) * math.exp(-te / t2s)
    assert value / math.sin(math.radians(flip)) == pytest.approx(expected, rel=1e-6)


def _bloch_mprage(t1: float, tr: float, te: float, ti: float, flip: float, repetitions: int = 40) -> float:
    """Pulse by pulse: inversion, recovery, 2n spoiled pulses (signal sampled at pulse n), recovery; many TRs."""
    spacing = 2.0 * te + 2.5
    n = max(0, min(se.MPRAGE_PULSES_TO_CENTRE, int(0.9 * ti / spacing), int((tr - ti) / spacing)))
    t_start = ti - n * spacing
    t_delay = max(tr - t_start - 2 * n * spacing, 0.0)
    relax = lambda m, t: 1.0 - (1.0 - m) * math.exp(-t / t1)  # noqa: E731
    a = math.radians(flip)
    mz, sampled = 1.0, 0.0
    for _ in range(repetitions):
        mz = relax(-se.MPRAGE_INVERSION_EFFICIENCY * mz, t_start)
        for k in range(2 * n):
            if k == n:
                sampled = mz
            mz = relax(mz * math.cos(a), spacing)
        mz = relax(mz, t_delay)
    return math.sin(a) * abs(sampled)


@pytest.mark.parametrize("t1, tr, te, ti, flip", [(1080.0, 2300.0, 2.5, 900.0, 9.0), (1700.0, 2000.0, 4.0, 400.0, 12.0),
                                                  (4200.0, 2700.0, 2.0, 1400.0, 7.0), (830.0, 2500.0, 3.0, 1100.0, 8.0)])
def test_mprage_matches_a_pulse_by_pulse_simulation(t1: float, tr: float, te: float, ti: float, flip: float) -> None:
    value = se.mprage(np.array([1.0]), np.array([t1]), np.array([1e9]), tr, te, ti, flip)[0]
    assert value == pytest.approx(_bloch_mprage(t1, tr, te, ti, flip), rel=1e-6)


def test_torch_per_item_parameters_match_numpy() -> None:
    """The qMRI head renders a batch whose items have their own protocols: same values as one call per item."""
    rng = np.random.default_rng(0)
    pd, t1 = rng.uniform(0.5, 1.0, (3, 50)), rng.uniform(300.0, 4500.0, (3, 50))
    t2 = rng.uniform(40.0, 2000.0, (3, 50))
    t2s = t2 * rng.uniform(0.3, 1.0, (3, 50))
    protocols = {"tr": [2300.0, 2000.0, 15.0], "te": [2.5, 4.0, 5.0], "ti": [900.0, 450.0, 1300.0], "fa": [9.0, 12.0, 30.0]}
    as_t = {k: torch.tensor(v, dtype=torch.float64)[:, None] for k, v in protocols.items()}
    maps = [torch.tensor(x) for x in (pd, t1, t2, t2s)]
    for sequence in se.SEQUENCES:
        batch = se.render(sequence, *maps, as_t["tr"], as_t["te"], as_t["ti"], as_t["fa"]).numpy()
        for i in range(3):
            single = se.render(sequence, pd[i], t1[i], t2[i], t2s[i], protocols["tr"][i], protocols["te"][i],
                               protocols["ti"][i], protocols["fa"][i])
            np.testing.assert_allclose(batch[i], single, rtol=1e-12, err_msg=sequence)


def test_torch_rendering_is_differentiable_in_the_maps() -> None:
    t1 = torch.tensor([1000.0], dtype=torch.float64, requires_grad=True)
    value = se.mprage(torch.tensor([1.0], dtype=torch.float64), t1, torch.tensor([50.0], dtype=torch.float64),
                      torch.tensor([2300.0]), torch.tensor([2.5]), torch.tensor([900.0]), torch.tensor([9.0]))
    value.sum().backward()
    assert t1.grad is not None and torch.isfinite(t1.grad).all() and float(t1.grad.abs()) > 0


def test_the_phantom_renders_with_the_shared_equations() -> None:
    for name in ("spin_echo", "inversion_recovery", "spoiled_gre", "mprage"):
        assert getattr(phantom_mri, name) is getattr(se, name)


def test_sequence_and_typical_fallback() -> None:
    assert se.sequence_for("T2w") == se.SPIN_ECHO and se.sequence_for("FLAIR") == se.INVERSION_RECOVERY
    assert se.sequence_for("T1w", 20.0, None) == se.SPOILED_GRE
    assert se.sequence_for("T1w", 2300.0, None) == se.MPRAGE and se.sequence_for("T1w") == se.MPRAGE
    assert se.sequence_for("CT") is None
    sequence, values, filled = se.filled_protocol("T2w", {"echo_time": 200.0})
    assert sequence == se.SPIN_ECHO and values["echo_time"] == 200.0
    assert values["repetition_time"] == se.TYPICAL_PROTOCOLS["T2w"]["repetition_time"]
    assert set(filled) == {"field_strength", "repetition_time", "flip_angle"}
    sequence, values, filled = se.filled_protocol("T1w", {"repetition_time": 20.0, "field_strength": 1.5})
    assert sequence == se.SPOILED_GRE and values["flip_angle"] == se.TYPICAL_GRE["flip_angle"]
    assert "inversion_time" not in filled
    with pytest.raises(ValueError, match="CT"):
        se.filled_protocol("CT", {})
