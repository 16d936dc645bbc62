"""Slab seams (issue 17, item 3): the seam measure, and 2.5D blending that leaves no step at slab borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unisyn_v2.evaluation.seams import seam_ratio, seam_report, slab_boundaries, smooth_pairs
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor
from unisyn_v2.models.sliding_window import compute_tile_starts, sliding_window_predict, z_window_layout
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.outputs import SynthesisOutput

from predictor_fixtures import conditioner, make_plans

SHAPE = (32, 40, 40)
TILE = (4, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def smooth_volume(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Slowly varying along every axis: what a seam-free synthesis of smooth tissue looks like."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    return (0.5 + 0.01 * zz + 0.1 * np.sin(yy / 9.0) + 0.1 * np.cos(xx / 11.0)).astype(np.float32)


def old_grid_boundaries(n_slices: int, k: int) -> np.ndarray:
    """Where the nnU-Net step (k/2) and the Gaussian along z hand over from one slab to the next."""
    starts, weights = z_window_layout(n_slices, k, 0.5)
    return slab_boundaries(n_slices, starts, weights)


class PerWindowOffset:
    """A slab-wise 'network': identity plus a random in-plane field per window, the same on its k slices."""

    def __init__(self, sigma: float = 0.05, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.sigma = sigma

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        b, c, _, h, w = batch.shape
        field = torch.randn((b, c, 1, h, w), generator=self.generator) * self.sigma
        return batch + field


class SliceOffsetNetwork(nn.Module):
    """A 2D network over k slices-as-channels whose output slice j is off by offsets[j]: a model whose
    slab positions disagree slightly, as trained 2.5D models do."""

    def __init__(self, offsets: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32))

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        assert source.ndim == 4 and source.shape[1] == len(self.offsets)
        return SynthesisOutput(synthesis=source + self.offsets[None, :, None, None], anatomy=None)


class SlabMeanNetwork(nn.Module):
    """A 2D network over k slices-as-channels that adds one pseudo-random in-plane field per slab (a function
    of the slab's mean, so every forward pass of a different slab is off differently, like a real model)."""

    def __init__(self, amplitude: float = 0.05) -> None:
        super().__init__()
        self.amplitude = amplitude

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        field = self.amplitude * torch.sin(1000.0 * source.mean(dim=1, keepdim=True))
        return SynthesisOutput(synthesis=source + field, anatomy=None)


# ----------------------------------------------------------------------------- the measure
def test_boundaries_of_the_old_grid_are_every_other_pair_for_four_slice_slabs() -> None:
    boundaries = old_grid_boundaries(30, 4)
    assert boundaries.tolist() == list(range(2, 27, 2))  # slices 2|3, 4|5, ...: where slab s hands over to s + 2


def test_measure_is_one_on_a_smooth_volume_and_large_with_steps() -> None:
    volume = smooth_volume()
    boundaries = old_grid_boundaries(SHAPE[0], 4)
    assert seam_ratio(volume, boundaries) == pytest.approx(1.0, abs=0.02)
    stepped = volume.copy()
    for z in boundaries:  # a step of 0.05 between every pair of slabs: the staircase
        stepped[z + 1:] += 0.05
    report = seam_report(stepped, boundaries, guide=volume)
    assert report.ratio > 3.0 and report.boundary_mean > report.inside_mean
    # a step *inside* the slabs is as visible as one at the border
    inside_steps = volume.copy()
    for z in boundaries:
        inside_steps[z + 2:] += 0.05
    assert seam_ratio(inside_steps, boundaries, guide=volume) > 3.0


def test_smooth_region_follows_the_guide_and_the_mask() -> None:
    guide = smooth_volume()
    guide[:, :, 30:] += np.arange(SHAPE[0])[:, None, None] * 1.0  # a steep ramp along z on one side
    mask = np.ones(SHAPE, dtype=bool)
    mask[:, :5] = False
    region = smooth_pairs(guide, mask)
    assert region.shape == (SHAPE[0] - 1, SHAPE[1], SHAPE[2])
    assert not region[:, :, 30:].any() and not region[:, :5].any() and region[:, 5:, :29].any()
    with pytest.raises(ValueError, match="mask shape"):
        smooth_pairs(guide, mask[1:])
    with pytest.raises(ValueError, match="no smooth voxel at boundary"):
        seam_report(guide, [], guide=guide)


# ----------------------------------------------------------------------------- the blending
def test_z_step_places_a_window_at_every_slice() -> None:
    starts = compute_tile_starts((30, 40, 40), TILE, 0.5, z_step=1)
    assert starts[0] == list(range(27)) and starts[1:] == compute_tile_starts((30, 40, 40), TILE, 0.5)[1:]
    assert compute_tile_starts((30, 40, 40), TILE, 0.5, z_step=3)[0] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 26]
    with pytest.raises(ValueError, match="z_step"):
        compute_tile_starts((30, 40, 40), TILE, 0.5, z_step=0)
    starts, weights = z_window_layout(30, 4, z_step=1)
    assert starts == list(range(-3, 30)) and len(weights) == 4  # the margin: the end slices see every position


def test_slab_positions_that_disagree_cancel_everywhere_including_the_end_slices() -> None:
    offsets = torch.tensor([0.04, -0.02, 0.03, -0.05])

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return batch + offsets[None, None, :, None, None]

    image = torch.full((1, 13, 20, 20), 0.5)
    new = sliding_window_predict(image, predictor, TILE, z_step=1)[0]
    per_slice = new.mean(dim=(1, 2))
    assert torch.allclose(new, new[6:7].expand_as(new), atol=1e-6), per_slice  # one blend of the 4 positions
    old = sliding_window_predict(image, predictor, TILE)[0].mean(dim=(1, 2))
    assert (old.max() - old.min()) > 0.04  # the old blend: each slice mostly from one position


@pytest.mark.parametrize("z_step, seam_free", [(None, False), (1, True)])
def test_per_window_random_offsets_leave_no_seam_with_a_slab_at_every_slice(z_step, seam_free) -> None:
    volume = smooth_volume()
    image = torch.from_numpy(volume)[None]
    prediction = sliding_window_predict(image, PerWindowOffset(), TILE, step_size=0.5, tile_batch_size=8,
                                        z_step=z_step)[0].numpy()
    ratio = seam_ratio(prediction, old_grid_boundaries(SHAPE[0], 4), guide=volume)
    assert (ratio <= 1.1) is seam_free, ratio
    if not seam_free:
        assert ratio > 1.5  # the old blending: every slice from one window, so the step sits at the border


@pytest.mark.parametrize("k, network", [
    (4, SlabMeanNetwork()),
    (8, SliceOffsetNetwork(tuple(0.03 * ((-1) ** j) * (1 + j % 3) for j in range(8)))),  # positions disagree by a few %
])
def test_predictor_blends_2p5d_slabs_without_seams_by_default(k: int, network: nn.Module) -> None:
    plans = make_plans(patch_zyx=(k, 16, 16))
    volume = smooth_volume()
    boundaries = old_grid_boundaries(SHAPE[0], k)
    ratios = {}
    for label, settings in (("new", PredictionSettings(progress=False, tile_batch_size=8)),
                            ("old", PredictionSettings(progress=False, tile_batch_size=8, slab_z_step=None))):
        predictor = UniSynPredictor([network], conditioner(plans), plans, "2.5d", settings=settings)
        prediction = predictor.predict_normalized(volume[None], ImageDescription("T1w", ImageMetadata()),
                                                  ImageDescription("CT", ImageMetadata()))
        ratios[label] = seam_ratio(prediction, boundaries, guide=volume)
    assert ratios["old"] > 1.1 and ratios["new"] <= 1.1, ratios
    assert predictor.settings_description()["slab_z_step"] is None  # recorded in the sidecar
