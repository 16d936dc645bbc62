"""The implicit (LIIF) decoder, its training, thick-slice rendering and prediction on a new grid (issue 20)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training_fixtures import DATASET_NAME, tiny_plans, write_text_encoder, write_training_dataset
from unisyn_v2.contracts.plans import Plans, PlansError
from unisyn_v2.dataset.image_io import Geometry, read_image, write_image
from unisyn_v2.inference.output_grid import (
    METHOD_LIIF, METHOD_RESAMPLED, liif_tiled_prediction, output_geometry,
)
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor
from unisyn_v2.networks.factory import build_synthesis_network
from unisyn_v2.networks.liif import LIIFDecoder, grid_coordinates, liif_decoder_of
from unisyn_v2.phantom.slice_profile import profile_matrix, render_thick_slices
from unisyn_v2.training.liif_training import (
    coarse_shape, degrade, draw_factors, gather_points, make_liif_batch, sample_points,
)
from unisyn_v2.training.run_training import run_training
from unisyn_v2.training.settings import TrainerSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def channel_zero_decoder(feature_dim: int = 3, local_ensemble: bool = True) -> LIIFDecoder:
    """A decoder whose MLP is one linear layer returning feature channel 0 (so its answer shows where it read)."""
    decoder = LIIFDecoder(feature_dim, hidden=(), out_channels=1, local_ensemble=local_ensemble)
    with torch.no_grad():
        decoder.mlp[0].weight.zero_()
        decoder.mlp[0].weight[0, 0] = 1.0
        decoder.mlp[0].bias.zero_()
    return decoder


def test_grid_coordinates_are_voxel_centres() -> None:
    coords = grid_coordinates((2, 1, 4))
    assert coords.shape == (8, 3)
    assert torch.allclose(coords[0], torch.tensor([-0.5, 0.0, -0.75]))
    assert torch.allclose(coords[-1], torch.tensor([0.5, 0.0, 0.75]))


def test_query_reads_the_right_voxels_and_blends_neighbours_trilinearly() -> None:
    decoder = channel_zero_decoder()
    features = torch.zeros(1, 3, 4, 3, 3)
    features[0, 0] = torch.arange(4.0)[:, None, None]  # channel 0 = z index
    native = decoder(features)
    assert native.shape == (1, 1, 4, 3, 3)
    assert torch.allclose(native[0, 0], features[0, 0], atol=1e-4)  # at a centre: that voxel
    # halfway between z voxels 1 and 2 (normalised centres -0.25 and 0.25): their mean
    cell = torch.tensor([[0.5, 2 / 3, 2 / 3]])
    value = decoder.query(features, torch.tensor([[[0.0, 0.0, 0.0], [-0.125, 0.0, 0.0]]]), cell)
    assert torch.allclose(value[0, :, 0], torch.tensor([1.5, 1.25]), atol=1e-4)
    nearest = channel_zero_decoder(local_ensemble=False).query(features, torch.tensor([[[-0.2, 0.0, 0.0]]]), cell)
    assert torch.allclose(nearest[0, 0], torch.tensor([1.0]))


def test_query_in_chunks_equals_one_call_and_bounds_the_points_per_mlp_call() -> None:
    torch.manual_seed(0)
    decoder = LIIFDecoder(4, hidden=(8,), query_chunk=7)
    features = torch.randn(2, 4, 3, 4, 5)
    coords = torch.rand(2, 50, 3) * 2 - 1
    cell = torch.full((2, 3), 0.1)
    seen: list[int] = []
    handle = decoder.mlp.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[1]))
    chunked = decoder.query(features, coords, cell)
    handle.remove()
    assert max(seen) == 7 and chunked.shape == (2, 50, 1)
    assert torch.allclose(chunked, decoder.query(features, coords, cell, chunk=1000), atol=1e-6)


def test_feature_unfolding_stacks_the_neighbour_slices_and_repeats_the_edges() -> None:
    features = torch.arange(3, dtype=torch.float32).reshape(1, 1, 3, 1, 1).expand(1, 2, 3, 2, 2).contiguous()
    features[:, 1] *= 10
    decoder = LIIFDecoder(2, hidden=(8,), unfold=(1, 0, 0))
    assert decoder.mlp[0].in_features == 2 * 3 + 6
    stacked = decoder.unfolded(features)  # own features, then the slice below (z - 1) and above (z + 1)
    assert stacked.shape == (1, 6, 3, 2, 2)
    assert stacked[0, :, :, 0, 0].tolist() == [[0, 1, 2], [0, 10, 20], [0, 0, 1], [0, 0, 10], [1, 2, 2], [10, 20, 20]]
    assert torch.equal(LIIFDecoder(2, hidden=(8,)).unfolded(features), features)
    values = decoder.query(features, torch.zeros(1, 5, 3), torch.full((1, 3), 0.5))
    assert values.shape == (1, 5, 1)
    kwargs = {"dims": 3, "in_channels": 1, "out_channels": 1, "encoder_width": 4, "num_blocks": 1, "feature_dim": 4,
              "decoder_hidden": [8], "text_dim": 2, "decoder": "liif", "liif_unfold": [1, 0, 0]}
    built = liif_decoder_of(build_synthesis_network("gfm", kwargs))
    assert built is not None and built.unfold == (1, 0, 0) and built.mlp[0].in_features == 4 * 3 + 6
    with pytest.raises(ValueError, match="liif_unfold"):
        LIIFDecoder(2, unfold=(1, 0))


def test_factory_builds_liif_for_3d_only_and_plans_refuse_it_for_slabs() -> None:
    kwargs = {"dims": 3, "in_channels": 1, "out_channels": 1, "encoder_width": 4, "num_blocks": 1, "feature_dim": 4,
              "decoder_hidden": [8], "text_dim": 2, "num_heads": 2, "decoder": "liif", "liif_max_scale": [3, 1, 1]}
    for kind in ("gfm", "crossattn"):
        decoder = liif_decoder_of(build_synthesis_network(kind, kwargs))
        assert decoder is not None and decoder.max_scale == (3.0, 1.0, 1.0)
    options = {"liif_interpolate_features": True, "liif_residual": True, "liif_max_share": 1.0, "liif_queries": 0}
    decoder = liif_decoder_of(build_synthesis_network("gfm", {**kwargs, **options}))
    assert decoder is not None and decoder.interpolate_features and decoder.base is not None
    patch = {k: torch.rand(2, 1, 6, 4, 4) for k in ("source", "target", "source_clean", "weight", "source_weight")}
    batch = make_liif_batch(patch, decoder, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert batch.factors == (3.0, 1.0, 1.0) and batch.source.shape == (2, 1, 2, 4, 4)  # the largest factor
    assert batch.coords.shape == (2, 96, 3) and torch.equal(batch.target_values[:, :, 0], patch["target"].flatten(1))
    with pytest.raises(ValueError, match="3D configuration"):
        build_synthesis_network("gfm", {**kwargs, "dims": 2})
    with pytest.raises(ValueError, match="decoder must be one of"):
        build_synthesis_network("gfm", {**kwargs, "decoder": "siren"})
    plans = tiny_plans().to_dict()
    plans["configurations"]["2.5d"]["network_kwargs"]["decoder"] = "liif"
    with pytest.raises(PlansError, match=r"2\.5d\.network_kwargs\.decoder"):
        Plans.from_dict(plans)


def test_slice_profiles_keep_constants_and_the_box() -> None:
    for profile in ("gaussian", "rect"):
        matrix = profile_matrix(16, 4, 4.0, profile)
        assert np.allclose(matrix.sum(1), 1.0)
        assert np.allclose(profile_matrix(8, 8, 1.0, profile), np.eye(8))  # thickness of one voxel: unchanged
    rect = profile_matrix(8, 2, 4.0, "rect")
    assert np.allclose(rect, np.repeat(np.eye(2), 4, axis=1) / 4)  # a boxcar of 4 voxels: their mean
    volume = np.zeros((16, 4, 4), np.float32)
    volume[8:] = 1.0
    thick, spacing = render_thick_slices(volume, (1.0, 2.0, 2.0), 4.0)
    assert thick.shape == (4, 4, 4) and spacing == (4.0, 2.0, 2.0)
    assert thick[0].max() < 0.01 and thick[-1].min() > 0.99 and 0.05 < thick[2, 0, 0] < 0.95  # blurred edge


def test_training_degradation_and_points() -> None:
    patch = torch.rand(2, 1, 12, 8, 8)
    assert torch.equal(degrade(patch, (1.0, 1.0, 1.0)), patch)
    assert degrade(patch, (3.0, 1.0, 1.0)).shape == (2, 1, 4, 8, 8) == (2, 1, *coarse_shape((12, 8, 8), (3.0, 1.0, 1.0)))
    linear, coords = sample_points((12, 8, 8), 2, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    values = gather_points(patch, linear)
    index = ((coords + 1) / 2 * torch.tensor([12.0, 8.0, 8.0]) - 0.5).round().long()  # back from the centres
    assert torch.equal(values[1, :, 0], patch[1, 0, index[1, :, 0], index[1, :, 1], index[1, :, 2]])


def test_interpolated_features_read_the_trilinear_feature_with_one_mlp_call() -> None:
    decoder = LIIFDecoder(3, hidden=(), interpolate_features=True)
    with torch.no_grad():
        decoder.mlp[0].weight.zero_()
        decoder.mlp[0].weight[0, 0] = 1.0  # channel 0
        decoder.mlp[0].weight[0, 3] = 10.0  # + 10 x the z offset from the nearest voxel centre
        decoder.mlp[0].bias.zero_()
    features = torch.zeros(1, 3, 4, 3, 3)
    features[0, 0] = torch.arange(4.0)[:, None, None] ** 2  # not linear in z: interpolation shows
    calls: list[int] = []
    decoder.mlp.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[1]))
    # z index 1.25 (normalised -0.125): trilinear 1 + 0.25 * 3 = 1.75, nearest voxel 1, offset 0.25
    value = decoder.query(features, torch.tensor([[[-0.125, 0.0, 0.0], [-0.25, 0.0, 0.0]]]), torch.tensor([[0.5, 0.6, 0.6]]))
    assert torch.allclose(value[0, :, 0], torch.tensor([1.75 + 2.5, 1.0]), atol=1e-4)
    assert calls == [2]  # one call for the points, not eight
    assert torch.allclose(decoder(features)[0, 0], features[0, 0], atol=1e-4)  # at the centres: the voxels


def test_residual_starts_from_the_interpolated_coarse_prediction_and_learns_a_correction() -> None:
    torch.manual_seed(0)
    for interpolate in (False, True):
        decoder = LIIFDecoder(4, hidden=(8, 8), residual=True, interpolate_features=interpolate, query_chunk=5)
        features = torch.randn(2, 4, 3, 4, 5, requires_grad=True)
        coarse = decoder.coarse_prediction(features)
        assert coarse is not None and coarse.shape == (2, 1, 3, 4, 5)
        assert torch.allclose(decoder(features), coarse, atol=1e-5)  # correction 0, centres: the pointwise head
        coords = torch.rand(2, 12, 3) * 2 - 1
        cell = torch.full((2, 3), 0.1)
        expected = torch.nn.functional.grid_sample(coarse, coords.flip(-1)[:, :, None, None], mode="bilinear",
                                                   padding_mode="border", align_corners=False)[:, 0, :, 0, 0]
        values = decoder.query(features, coords, cell)  # in chunks of 5: one base for every chunk
        assert torch.allclose(values[..., 0], expected, atol=1e-5)
        values.sum().backward()
        assert decoder.mlp[-1].weight.grad is not None and decoder.mlp[-1].weight.grad.abs().sum() > 0
        assert decoder.base is not None and decoder.base[0].weight.grad.abs().sum() > 0


def test_every_point_and_factors_near_the_largest() -> None:
    linear, coords = sample_points((3, 2, 2), 2, 0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(linear, torch.arange(12).expand(2, -1))
    assert torch.allclose(coords[0], grid_coordinates((3, 2, 2)))
    rng = np.random.default_rng(0)
    assert all(draw_factors((4.0, 1.0, 1.0), rng, max_share=1.0) == (4.0, 1.0, 1.0) for _ in range(5))
    drawn = [draw_factors((4.0, 1.0, 1.0), rng, max_share=0.5)[0] for _ in range(400)]
    assert 150 < sum(f == 4.0 for f in drawn) < 250 and min(drawn) < 2.0
    assert draw_factors((4.0, 1.0, 1.0), np.random.default_rng(3)) == draw_factors((4.0, 1.0, 1.0),
                                                                                      np.random.default_rng(3), 0.0)
    with pytest.raises(ValueError, match="liif_max_share"):
        LIIFDecoder(4, max_share=1.5)
    with pytest.raises(ValueError, match="liif_queries"):
        LIIFDecoder(4, queries=-1)


def test_tiled_prediction_blends_tiles_into_the_output_points() -> None:
    """A network whose features are the input: the output grid gets the input interpolated, across tile borders."""
    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = channel_zero_decoder(1)

        def fuse(self, features: torch.Tensor, _text: torch.Tensor) -> torch.Tensor:
            return features

        def encoder(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - a stand-in for the encoder
            return x

    data = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], (10, 6, 6))[None].copy()
    positions = [np.arange(40) * 0.25 - 0.375, np.arange(6, dtype=float), np.arange(6, dtype=float)]  # 4x finer in z
    values, covered = liif_tiled_prediction(data, [Identity()], None, None, positions, [0.25, 1, 1], (4, 6, 6), 0.5)
    assert values.shape == (40, 6, 6) and covered.all()
    inner = slice(2, 38)  # inside the first and last centres the ensemble interpolates linearly
    assert np.allclose(values[inner, 3, 3], positions[0][inner], atol=1e-3)


@pytest.fixture
def liif_model(unisyn_dirs: dict[str, Path]) -> tuple[dict[str, Path], Path]:
    plans = tiny_plans(volume_patch=(8, 16, 16))
    config = plans.configurations["3d"]
    kwargs = {**config.network_kwargs, "decoder": "liif", "liif_max_scale": [3.0, 1.0, 1.0], "liif_queries": 256}
    plans = dataclasses.replace(plans, default_configuration="3d",
                                configurations={**plans.configurations, "3d": dataclasses.replace(config, network_kwargs=kwargs)})
    write_training_dataset(unisyn_dirs["preprocessed"], plans=plans)
    write_text_encoder(unisyn_dirs["results"], plans)
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=2, num_workers=0, validation_figures=0)
    trainer = run_training("902", "gfm", 0, configuration="3d", device="cpu", settings=settings)
    assert liif_decoder_of(trainer.network) is not None
    log = (trainer.fold_folder / "training_log.txt").read_text()
    assert "epoch 1/1" in log and "nan" not in log.lower()
    return unisyn_dirs, unisyn_dirs["results"] / DATASET_NAME / "GFMTrainer__unisynPlans__3d"


def _thick_input(folder: Path) -> tuple[Path, Geometry]:
    """A smooth T1w-like image with 4 mm slices (2 x 2 mm in-plane) and its brain mask."""
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 20), np.linspace(-1, 1, 20), indexing="ij")
    brain = (zz**2 + yy**2 + xx**2) < 0.8
    image = (brain * (0.6 + 0.3 * np.cos(3 * yy) * np.sin(2 * xx))).astype(np.float32)
    geometry = Geometry((8, 20, 20), (2.0, 2.0, 4.0), (10.0, -5.0, 3.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    folder.mkdir()
    write_image(folder / "sub-01_T1w.nii.gz", image, geometry)
    write_image(folder / "sub-01_brainmask.nii.gz", brain.astype(np.uint8), geometry, dtype=np.uint8)
    return folder, geometry


def test_training_step_changes_the_implicit_decoder_and_prediction_writes_the_new_grid(liif_model, tmp_path: Path) -> None:
    _dirs, model = liif_model
    inputs, geometry = _thick_input(tmp_path / "in")
    settings = PredictionSettings(progress=False, output_spacing=(2.0, 2.0, 2.0))
    predictor = UniSynPredictor.from_model_folder(model, ["0"], "checkpoint_final.pth", "cpu", settings)
    image_path = predictor.predict([inputs], tmp_path / "out", "CT")[0]
    array, written = read_image(image_path)
    assert written.shape_zyx == (16, 20, 20) and np.allclose(written.spacing_xyz, (2.0, 2.0, 2.0))
    assert np.allclose(written.origin_xyz, geometry.origin_xyz) and np.allclose(written.direction, geometry.direction)
    assert np.isfinite(array).all() and array.min() >= -1024
    sidecar = json.loads(image_path.with_name("sub-01_CT.json").read_text())
    assert sidecar["output_grid"]["method"] == METHOD_LIIF and sidecar["settings"]["output_spacing"] == [2.0, 2.0, 2.0]
    assert sidecar["target_metadata"]["voxel_size"] == [2.0, 2.0, 2.0]  # the prompt asks for the output grid
    assert written.matches(output_geometry(geometry, (2.0, 2.0, 2.0)))


def test_a_conv_model_falls_back_to_bspline_resampling_and_says_so(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    plans = tiny_plans()
    write_training_dataset(unisyn_dirs["preprocessed"], plans=plans)
    write_text_encoder(unisyn_dirs["results"], plans)
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=1, num_workers=0, validation_figures=0)
    run_training("902", "gfm", 0, configuration="3d", device="cpu", settings=settings)
    inputs, geometry = _thick_input(tmp_path / "in")
    predictor = UniSynPredictor.from_model_folder(unisyn_dirs["results"] / DATASET_NAME / "GFMTrainer__unisynPlans__3d",
                                                  ["0"], "checkpoint_final.pth", "cpu",
                                                  PredictionSettings(progress=False, output_spacing=(4.0, 4.0, 2.0)))
    image_path = predictor.predict([inputs], tmp_path / "out", "CT")[0]
    _array, written = read_image(image_path)
    assert written.shape_zyx == (16, 10, 10) and np.allclose(written.spacing_xyz, (4.0, 4.0, 2.0))
    sidecar = json.loads(image_path.with_name("sub-01_CT.json").read_text())
    assert sidecar["output_grid"]["method"] == METHOD_RESAMPLED and sidecar["settings"]["output_spacing"] == [4.0, 4.0, 2.0]


def test_phantom_thick_slice_copies_keep_the_box_and_read_as_sources(tmp_path: Path) -> None:
    from unisyn_v2.metadata.bids import read_sidecar
    from unisyn_v2.phantom.generator import generate_phantom_dataset
    from unisyn_v2.phantom.slice_profile import write_thick_slice_dataset

    root = generate_phantom_dataset(tmp_path / "ph", 1, 0, shape=(16, 16, 16), voxel_size_mm=(6.0, 6.0, 6.0),
                                    modalities=("T1w", "T2w"), complete=True)
    out = write_thick_slice_dataset(root, 24.0, profile="rect")
    thick, geometry = read_image(out / "sub-001_T1w.nii.gz")
    fine, fine_geometry = read_image(root / "sub-001" / "sub-001_T1w.nii.gz")
    assert thick.shape == (4, 16, 16) and np.allclose(geometry.spacing_xyz, (6.0, 6.0, 24.0))
    first_edge = lambda g: g.origin_xyz[2] - g.spacing_xyz[2] / 2  # noqa: E731
    assert np.isclose(first_edge(geometry), first_edge(fine_geometry))  # the same box, not a shifted one
    assert np.allclose(thick[1], fine[4:8].mean(0), atol=1e-4)  # a boxcar slice is the mean of its 4 fine slices
    assert read_sidecar(out / "sub-001_T1w.nii.gz").repetition_time is not None  # BIDS units, read back in ms
    assert read_image(out / "sub-001_brainmask.nii.gz")[0].shape == (4, 16, 16)
