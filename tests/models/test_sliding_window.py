"""Tests for the Gaussian sliding-window inference."""

from __future__ import annotations

import logging

import pytest
import torch

from unisyn_v2.models import sliding_window as sw
from unisyn_v2.models.sliding_window import (
    SlidingWindowPredictor,
    compute_tile_starts,
    gaussian_importance_map,
    sliding_window_predict,
)


@pytest.mark.parametrize(
    "size,tile,step", [((37, 20, 16), (16, 8, 16), 0.5), ((64, 33, 9), (16, 16, 4), 0.25), ((10, 10, 10), (3, 4, 5), 0.7)]
)
def test_tile_starts_cover_image(size, tile, step):
    starts = compute_tile_starts(size, tile, step)
    for axis, (s, t) in enumerate(zip(size, tile)):
        st = starts[axis]
        assert st[0] == 0 and st[-1] == s - t
        assert st == sorted(set(st))
        covered = torch.zeros(s, dtype=torch.bool)
        for a in st:
            covered[a : a + t] = True
        assert covered.all()
        assert max(b - a for a, b in zip(st, st[1:] + [st[-1]])) <= t * step + 1


def test_tile_starts_step_one_non_overlapping_and_rule():
    assert compute_tile_starts((32, 16, 8), (8, 8, 8), 1.0) == [[0, 8, 16, 24], [0, 8], [0]]
    # nnU-Net rule: n = ceil((100 - 40) / 20) + 1 = 4 steps, evenly from 0 to 60
    assert compute_tile_starts((100,), (40,), 0.5) == [[0, 20, 40, 60]]
    with pytest.raises(ValueError):
        compute_tile_starts((4, 4, 4), (8, 4, 4), 0.5)


def test_gaussian_map_properties():
    for tile in [(9, 9, 9), (8, 12, 6)]:
        g = gaussian_importance_map(tile)
        assert g.shape == tile and g.dtype == torch.float32
        assert torch.isclose(g.max(), torch.tensor(1.0))
        assert (g > 0).all() and g.min() >= sw.GAUSSIAN_FLOOR * 0.999
        for d in range(3):
            assert torch.equal(g, torch.flip(g, (d,)))
    g = gaussian_importance_map((9, 9, 9))
    assert g[4, 4, 4] == g.max() and int(g.argmax()) == 4 * 81 + 4 * 9 + 4
    tiny = gaussian_importance_map((2, 2, 64), sigma_scale=0.01)
    assert (tiny > 0).all()
    g[...] = 0  # callers get a clone; the cache stays intact
    assert gaussian_importance_map((9, 9, 9)).max() == 1.0


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 3, padding=1)
    ).eval()


def test_single_tile_equals_forward_pass():
    net = _conv_net()
    image = torch.randn(2, 8, 12, 10, generator=torch.Generator().manual_seed(1))
    out = sliding_window_predict(image, net, tile_size=(8, 12, 10))
    with torch.no_grad():
        expected = net(image[None])[0]
    assert out.shape == (1, 8, 12, 10) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("gaussian", [True, False])
def test_identity_predictor_no_seams(mirror, gaussian):
    image = torch.randn(2, 19, 23, 17, generator=torch.Generator().manual_seed(2))
    out = sliding_window_predict(
        image, lambda x: x, tile_size=(8, 10, 6), step_size=0.5, use_gaussian=gaussian,
        tile_batch_size=3, use_mirroring=mirror,
    )
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


def test_analytic_predictor_with_channel_change():
    image = torch.rand(1, 13, 9, 11, generator=torch.Generator().manual_seed(3))
    calls = []

    def predictor(x):
        calls.append(x.shape[0])
        return torch.cat([x * 2 + 1, -x], dim=1)

    runner = SlidingWindowPredictor(tile_size=(6, 6, 6), step_size=0.5, tile_batch_size=5, out_channels=2)
    out = runner(image, predictor)
    torch.testing.assert_close(out[0:1], image * 2 + 1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:2], -image, rtol=1e-5, atol=1e-5)
    assert max(calls) <= 5


def test_mirroring_runs_all_flip_combinations_and_undoes_each_flip():
    image = torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = []

    def predictor(x):
        seen.append(x.clone())
        return x * 2  # equivariant to flips: every un-flipped pass must agree with the unflipped one

    out = sliding_window_predict(image, predictor, (8, 8, 8), use_mirroring=True, mirror_axes=(0, 2), use_gaussian=False)
    combinations = [(), (0,), (2,), (0, 2)]
    expected_inputs = [torch.flip(image, dims=[d + 1 for d in c]) if c else image for c in combinations]
    assert len(seen) == 4 and all(any(torch.equal(s[0], e) for s in seen) for e in expected_inputs)
    torch.testing.assert_close(out, image * 2)

    def position_aware(x):  # not equivariant: an un-flip that is missing or wrong changes the mean
        return torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x).clone()

    mirrored = sliding_window_predict(image, position_aware, (8, 8, 8), use_mirroring=True, mirror_axes=(2,), use_gaussian=False)
    expected = 0.5 * (torch.arange(8.0) + torch.arange(8.0).flip(0))  # the x-flipped pass, flipped back, reversed
    torch.testing.assert_close(mirrored[0, 0, 0], expected)


def test_image_smaller_than_tile_is_padded_and_cropped():
    image = torch.rand(1, 5, 7, 3, generator=torch.Generator().manual_seed(4))
    seen = []

    def predictor(x):
        seen.append(tuple(x.shape[2:]))
        return x + 1

    out = sliding_window_predict(image, predictor, tile_size=(8, 8, 8), pad_value=-1.0)
    assert seen == [(8, 8, 8)]
    assert out.shape == image.shape
    torch.testing.assert_close(out, image + 1, rtol=1e-6, atol=1e-6)


def test_oom_falls_back_to_cpu_accumulation(monkeypatch, caplog):
    original = sw._run_tiles
    accum_devices = []

    def flaky(*args, **kwargs):
        accum_devices.append(kwargs["accum_device"])
        if len(accum_devices) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(sw, "_run_tiles", flaky)
    image = torch.rand(1, 10, 10, 10)
    with caplog.at_level(logging.WARNING, logger=sw.__name__):
        out = sliding_window_predict(image, lambda x: x * 3, (6, 6, 6), accumulate_on_device=True)
    assert len(accum_devices) == 2 and accum_devices[1] == torch.device("cpu")
    assert "out of memory" in caplog.text
    torch.testing.assert_close(out, image * 3, rtol=1e-5, atol=1e-5)


def test_runtime_oom_from_predictor_triggers_fallback_but_other_errors_propagate():
    state = {"n": 0}

    def predictor(x):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("CUDA error: out of memory")
        return x

    image = torch.rand(1, 6, 6, 6)
    torch.testing.assert_close(sliding_window_predict(image, predictor, (6, 6, 6)), image)

    def broken(x):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        sliding_window_predict(image, broken, (6, 6, 6))


def test_bad_predictor_output_shape_raises():
    with pytest.raises(ValueError, match="predictor returned"):
        sliding_window_predict(torch.rand(1, 6, 6, 6), lambda x: x[:, :, :3], (6, 6, 6))


def test_progress_bar_counts_every_batch_and_no_grad_is_kept(capsys):
    net = _conv_net()
    assert any(p.requires_grad for p in net.parameters())
    out = sliding_window_predict(torch.rand(2, 10, 10, 10), net, (6, 6, 6), step_size=0.5, tile_batch_size=2, progress=True)
    assert not out.requires_grad and out.grad_fn is None and out.shape == (1, 10, 10, 10)
    bar = capsys.readouterr().err
    tiles = len(compute_tile_starts((10, 10, 10), (6, 6, 6), 0.5)[0]) ** 3
    assert "sliding window" in bar and f"{(tiles + 1) // 2}/{(tiles + 1) // 2}" in bar  # tqdm's final count of batches
