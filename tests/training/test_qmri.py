"""The physics-informed MRI head (issue 22): maps, rendering with the prompt's parameters, fallback, training and --export_qmaps."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unisyn_v2.metadata import signal_equations as se
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.factory import build_qmri_network, build_synthesis_network
from unisyn_v2.networks.qmri_head import (
    PHYSICS_DIM, T1_RANGE_MS, T2_RANGE_MS, PhysicsTextConditioner, fit_to_target, physics_vector,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXT_DIM = 6


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                              text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmap_hidden=[8]).eval()


def _embedding(*descriptions: ImageDescription) -> torch.Tensor:
    text = torch.randn(len(descriptions), TEXT_DIM, generator=torch.Generator().manual_seed(1))
    return torch.cat([text, torch.tensor([physics_vector(d) for d in descriptions])], dim=1)


def _mr(modality: str, **fields: float) -> ImageDescription:
    return ImageDescription(modality, ImageMetadata(**fields))


T2W = _mr("T2w", field_strength=3.0, repetition_time=4000.0, echo_time=100.0, flip_angle=90.0)


def test_shapes_and_positive_maps_in_their_ranges() -> None:
    net = _network()
    x = torch.rand(2, 4, 16, 16)
    emb = _embedding(T2W, ImageDescription("CT", ImageMetadata(kvp=120.0)))
    with torch.no_grad():
        out = net(x, emb, emb)
        maps = net.quantitative_maps(x, emb, emb)
    assert out.synthesis.shape == (2, 4, 16, 16) and torch.isfinite(out.synthesis).all()
    assert maps.shape == (2, 4, 4, 16, 16)
    pd, t1, t2, t2s = maps.unbind(1)
    assert (pd > 0).all() and (pd < 1.5).all()
    assert (t1 > T1_RANGE_MS[0] * 0.5 ** 1.0).all() and (t1 < T1_RANGE_MS[1]).all()  # T1 at 3 T within its range
    assert (t2 >= T2_RANGE_MS[0]).all() and (t2 <= T2_RANGE_MS[1]).all() and (t2s <= t2 + 1e-4).all()
    assert 500.0 < float(t1.median()) < 3000.0 and 40.0 < float(t2.median()) < 250.0  # typical brain values at the start


@pytest.mark.parametrize("description, sequence", [
    (T2W, se.SPIN_ECHO),
    (_mr("FLAIR", field_strength=1.5, repetition_time=9000.0, echo_time=110.0, inversion_time=2200.0, flip_angle=90.0),
     se.INVERSION_RECOVERY),
    (_mr("T1w", field_strength=3.0, repetition_time=2300.0, echo_time=2.5, inversion_time=600.0, flip_angle=9.0), se.MPRAGE),
    (_mr("T1w", field_strength=1.5, repetition_time=20.0, echo_time=4.0, flip_angle=30.0), se.SPOILED_GRE),
])
def test_render_uses_the_prompt_sequence_and_parameters(description: ImageDescription, sequence: str) -> None:
    net = _network()
    x = torch.rand(1, 4, 16, 16)
    emb = _embedding(description)
    m = description.metadata
    with torch.no_grad():
        anatomy = net.encode_anatomy(x, emb)
        rendered = net.decode(anatomy, emb)
        maps = net.maps(anatomy, torch.tensor([m.field_strength]))
    expected = se.render(sequence, maps["pd"], maps["t1"], maps["t2"], maps["t2s"], m.repetition_time, m.echo_time,
                         m.inversion_time or 0.0, m.flip_angle)
    torch.testing.assert_close(rendered, expected)


def test_contrast_moves_with_echo_time_and_field_moves_t1() -> None:
    net = _network()
    x = torch.rand(2, 4, 16, 16)
    short, long = (_mr("T2w", field_strength=3.0, repetition_time=4000.0, echo_time=te, flip_angle=90.0) for te in (30.0, 200.0))
    with torch.no_grad():
        out = net(x, _embedding(short, short), _embedding(short, long)).synthesis
        anatomy = net.encode_anatomy(x, _embedding(short, short))
        t1_low, t1_high = (net.maps(anatomy, torch.tensor([b, b]))["t1"] for b in (1.5, 3.0))
    assert (out[1] < out[0]).all()  # the same anatomy, a longer TE: less signal everywhere (T2 decay)
    assert (t1_low < t1_high).all()  # T1 shortens at lower field (exponent in (0, 1))


def test_ct_targets_keep_the_gfm_decoder() -> None:
    net = _network()
    x = torch.rand(2, 4, 16, 16)
    ct = ImageDescription("CT", ImageMetadata(kvp=120.0))
    emb = _embedding(T2W, ct)
    with torch.no_grad():
        anatomy = net.encode_anatomy(x, emb)
        mixed = net.decode(anatomy, emb)
        decoded = net.gfm.decode(anatomy, emb[:, :TEXT_DIM])
        rendered = net.render(anatomy, emb[:, TEXT_DIM:])
    torch.testing.assert_close(mixed[1], decoded[1])
    torch.testing.assert_close(mixed[0], rendered[0])


def test_missing_parameters_fall_back_to_typical_values_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class FakeText:
        text_dim, device, tokenizer = TEXT_DIM, torch.device("cpu"), None

        def embed(self, descriptions: list[ImageDescription]) -> torch.Tensor:
            return torch.zeros(len(descriptions), TEXT_DIM)

        def describe(self) -> dict[str, object]:
            return {"kind": "text", "text_dim": TEXT_DIM}

    conditioner = PhysicsTextConditioner(FakeText())
    bare = _mr("T2w", echo_time=150.0)
    with caplog.at_level(logging.WARNING, logger="unisyn_v2.networks.qmri_head"):
        first = conditioner.embed([bare])
        conditioner.embed([bare])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "field_strength, repetition_time, flip_angle" in warnings[0]
    typical = se.TYPICAL_PROTOCOLS["T2w"]
    assert first.shape == (1, TEXT_DIM + PHYSICS_DIM)
    assert first[0, TEXT_DIM:].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, typical["field_strength"], typical["repetition_time"],
                                            150.0, 0.0, typical["flip_angle"]]
    assert physics_vector(ImageDescription("FDG-PET")) == [0.0] * PHYSICS_DIM
    assert conditioner.describe()["kind"] == "text_physics" and conditioner.text_dim == TEXT_DIM + PHYSICS_DIM


def test_fit_to_target_is_the_per_item_affine_least_squares_with_nonnegative_scale() -> None:
    s = torch.rand(3, 2, 8, 8) + 0.1
    mask = torch.ones_like(s)
    target = torch.stack([3.0 * s[0] - 0.2, 0.5 * s[1] + 0.1, -2.0 * s[2] + 1.0])
    fitted = fit_to_target(s, target, mask)
    torch.testing.assert_close(fitted[:2], target[:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fitted[2], torch.full_like(s[2], float(target[2].mean())), rtol=1e-4, atol=1e-4)  # no inversion
    passed = fit_to_target(s, target, mask, torch.tensor([True, False, True]))
    torch.testing.assert_close(passed[1], s[1])


def test_gain_only_fit_keeps_tissue_ratios() -> None:
    """With the target's p_low / p_high the fit has one gain: the contract of a gain x rendering is recovered exactly,
    and a rendering with the right tissue order but compressed contrast is no longer fitted (the affine fit is)."""
    s = torch.rand(2, 1, 8, 8) + 0.1
    raw = 7.0 * s
    p_high = torch.stack([torch.quantile(raw[i], 0.995) for i in range(2)])
    p_low = torch.stack([torch.quantile(raw[i], 0.005) for i in range(2)])
    target = (raw - p_low.view(-1, 1, 1, 1)) / (p_high - p_low).view(-1, 1, 1, 1)
    ratio = p_low / p_high
    mask = torch.ones_like(s)
    torch.testing.assert_close(fit_to_target(s, target, mask, None, ratio), target, rtol=1e-4, atol=1e-4)
    compressed = 0.5 + 0.01 * s  # same order, 1/100 of the contrast on a large baseline
    torch.testing.assert_close(fit_to_target(compressed, target, mask), target, rtol=1e-3, atol=1e-3)
    assert float((fit_to_target(compressed, target, mask, None, ratio) - target).abs().mean()) > 0.1


def test_given_gain_replaces_the_per_patch_fit() -> None:
    """qmri_gain "prompt": the rendering gets the gain it is given, so a patch whose maps are too dark is not rescaled
    to its target (the per-patch least-squares gain hides a uniform error in it)."""
    s = torch.rand(2, 1, 8, 8) + 0.1
    ratio = torch.tensor([0.1, 0.2])
    target = (3.0 * s - ratio.view(-1, 1, 1, 1)) / (1.0 - ratio.view(-1, 1, 1, 1))  # raw over p_high = 3 s
    mask = torch.ones_like(s)
    gain = torch.tensor([3.0, 3.0])
    torch.testing.assert_close(fit_to_target(s, target, mask, None, ratio, gain), target)
    dark = 0.5 * s  # every map renders half the signal
    torch.testing.assert_close(fit_to_target(dark, target, mask, None, ratio), target, rtol=1e-4, atol=1e-4)
    assert float((fit_to_target(dark, target, mask, None, ratio, gain) - target).abs().mean()) > 0.3


def test_prompt_gain_depends_on_the_protocol_only_and_trains() -> None:
    torch.manual_seed(0)
    net = build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                             text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmap_hidden=[8], qmri_gain="prompt")
    long_te = _mr("T2w", field_strength=3.0, repetition_time=4000.0, echo_time=200.0, flip_angle=90.0)
    emb = _embedding(T2W, T2W, long_te)
    gain = net.training_gain(emb)
    assert gain.shape == (3,) and (gain > 0).all()
    values = gain.detach().tolist()
    assert values[0] == pytest.approx(values[1]) and values[0] != pytest.approx(values[2])
    gain.sum().backward()
    assert net.gain_head[0].weight.grad is not None and float(net.gain_head[0].weight.grad.abs().sum()) > 0
    assert _network().training_gain(emb) is None  # the default: one least-squares gain per patch
    with pytest.raises(ValueError, match="qmri_gain 'image'"):
        build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                           text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmri_gain="image")


def test_trainer_takes_head_width_and_gain_from_the_plans_and_uses_the_prompt_gain() -> None:
    from types import SimpleNamespace

    from unisyn_v2.networks.slice_adapter import SlicesAsChannels
    from unisyn_v2.training.qmri_trainer import QMRITrainer

    trainer = QMRITrainer.__new__(QMRITrainer)
    trainer.config = SimpleNamespace(network_kwargs={"feature_dim": 8, "qmap_hidden": [16, 16], "qmri_gain": "prompt"})
    trainer.conditioner = None
    kwargs = QMRITrainer.network_info(trainer)["kwargs"]
    assert kwargs["qmap_hidden"] == [16, 16] and kwargs["qmri_gain"] == "prompt"
    trainer.config = SimpleNamespace(network_kwargs={"feature_dim": 8})
    kwargs = QMRITrainer.network_info(trainer)["kwargs"]
    assert kwargs["qmap_hidden"] == list(QMRITrainer.qmap_hidden) and kwargs["qmri_compartments"] == 3  # new trainings
    old_folder = {"dims": 2, "in_channels": 4, "out_channels": 4, "encoder_width": 8, "num_blocks": 1, "feature_dim": 8,
                  "text_dim": TEXT_DIM + PHYSICS_DIM, "decoder_hidden": [8], "qmap_hidden": [8]}
    assert build_qmri_network(**old_folder).compartments == 1  # trainer.json written before the key: one compartment

    torch.manual_seed(0)
    net = build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                             text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmap_hidden=[8], qmri_gain="prompt")
    s = torch.rand(1, 4, 8, 8) + 0.1
    emb, ratio, mask = _embedding(T2W), torch.tensor([0.1]), torch.ones(1, 4, 8, 8)
    expected = fit_to_target(s, s, mask, None, ratio, net.training_gain(emb))
    torch.testing.assert_close(trainer._fitted(s, s, mask, emb, ratio, SlicesAsChannels(net)), expected)
    assert not torch.allclose(expected, fit_to_target(s, s, mask, None, ratio))


def _set_compartments(net: torch.nn.Module, fractions: list[float]) -> None:
    """Every voxel gets the start maps of each compartment and these fractions (head weights zeroed)."""
    last = net.qmap_head.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        bias = last.bias.view(net.compartments, 6, net.out_channels)
        bias[:, 5] = torch.log(torch.tensor(fractions)).view(-1, 1)


def test_compartments_add_their_magnitudes_and_start_at_grey_white_csf() -> None:
    """qmri_compartments 3: a voxel's signal is the fraction-weighted sum of its compartments' signals (the phantom's
    partial-volume model), so a voxel turns from tissue into CSF along a straight line in signal, never through the
    inversion-recovery null that a single compartment's T1 must cross (a barrier for FLAIR and MPRAGE targets)."""
    torch.manual_seed(0)
    net = build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                             text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmap_hidden=[8], qmri_compartments=3).eval()
    flair = _mr("FLAIR", field_strength=3.0, repetition_time=9000.0, echo_time=110.0, inversion_time=2450.0, flip_angle=90.0)
    x, emb = torch.rand(1, 4, 8, 8), _embedding(flair)
    signals = []
    for fractions in ([0.998, 0.001, 0.001], [0.001, 0.001, 0.998], [0.5, 0.001, 0.499]):
        _set_compartments(net, fractions)
        with torch.no_grad():
            anatomy = net.encode_anatomy(x, emb)
            maps = net.maps(anatomy, torch.tensor([3.0]))
            signals.append(float(net.decode(anatomy, emb).mean()))
        assert maps["pd"].shape == (1, 3, 4, 8, 8)
        torch.testing.assert_close(maps["fraction"][0, :, 0, 0, 0], torch.tensor(fractions), rtol=1e-4, atol=1e-5)
    assert 1300.0 < float(maps["t1"][0, 0].mean()) < 1500.0 and float(maps["t1"][0, 2].mean()) > 3500.0  # GM, CSF starts
    grey, csf, half = signals
    assert csf < 0.2 * grey  # CSF near its FLAIR null at TI 2450 ms
    assert half == pytest.approx(0.5 * grey + 0.5 * csf, rel=0.01)  # magnitudes add: half the grey matter's signal
    effective = net.quantitative_maps(x, emb, emb)
    _set_compartments(net, [0.998, 0.001, 0.001])
    grey_only = net.quantitative_maps(x, emb, emb)
    with torch.no_grad():
        start = net.maps(net.encode_anatomy(x, emb), torch.tensor([3.0]))
    torch.testing.assert_close(grey_only[0, 1], start["t1"][0, 0], rtol=0.02, atol=0.0)  # the dominant compartment's
    assert effective.shape == (1, 4, 4, 8, 8) and torch.isfinite(effective).all()
    with pytest.raises(ValueError, match="qmri_compartments must be 1-8"):
        build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                           text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmri_compartments=0)


def test_plans_with_qmri_keys_still_build_the_other_kinds() -> None:
    """One plans dict serves every trainer: qMRI keys in network_kwargs (README) must not stop the GFM from training."""
    kwargs = {"dims": 2, "in_channels": 4, "out_channels": 4, "encoder_width": 8, "num_blocks": 1, "feature_dim": 8,
              "decoder_hidden": [8], "text_dim": TEXT_DIM, "num_heads": 2, "qmri_compartments": 3, "qmap_hidden": [8],
              "qmri_compartment_spread": 1.5, "qmri_gain": "patch"}
    for kind in ("gfm", "crossattn"):
        assert build_synthesis_network(kind, kwargs) is not None
    qmri = build_synthesis_network("gfm_qmri", {**kwargs, "text_dim": TEXT_DIM + PHYSICS_DIM})
    assert qmri.compartments == 3 and qmri.compartment_spread == 1.5
    with pytest.raises(ValueError, match="unknown kwargs"):
        build_synthesis_network("gfm", {**kwargs, "qmri_compartmentz": 3})


def test_compartment_spread_keeps_each_compartment_near_its_tissue() -> None:
    """qmri_compartment_spread 1.6: each compartment's PD, T1 and T2 start at its tissue and stay within 1.6x of it, whatever
    the head outputs, so a grey-matter compartment cannot turn into CSF (only the fractions mix them)."""
    torch.manual_seed(0)
    net = build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                             text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmap_hidden=[8], qmri_compartments=3,
                             qmri_compartment_spread=1.6).eval()
    emb = _embedding(_mr("T2w", field_strength=3.0, repetition_time=5000.0, echo_time=90.0, flip_angle=90.0))
    x = torch.rand(1, 4, 8, 8)
    starts = torch.tensor([[1400.0, 95.0, 0.8], [850.0, 75.0, 0.7], [4000.0, 1500.0, 1.0]])
    with torch.no_grad():
        maps = net.maps(net.encode_anatomy(x, emb), torch.tensor([3.0]))
        for k in range(3):  # near the start (the head's last layer is scaled down, not zero)
            torch.testing.assert_close(maps["t1"][0, k].median(), starts[k, 0], rtol=0.1, atol=0.0)
            torch.testing.assert_close(maps["t2"][0, k].median(), starts[k, 1], rtol=0.1, atol=0.0)
            torch.testing.assert_close(maps["pd"][0, k].median(), starts[k, 2], rtol=0.1, atol=0.0)
        net.qmap_head.layers[-1].bias.fill_(50.0)  # saturated outputs reach the band's edge, not the wide range's
        high = net.maps(net.encode_anatomy(x, emb), torch.tensor([3.0]))
    torch.testing.assert_close(high["t1"][0, :, 0, 0, 0], starts[:, 0] * 1.6, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(high["t2"][0, :, 0, 0, 0], starts[:, 1] * 1.6, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(high["pd"][0, :, 0, 0, 0], starts[:, 2] * 1.6, rtol=1e-4, atol=0.0)
    with pytest.raises(ValueError, match="qmri_compartment_spread"):
        build_qmri_network(dims=2, in_channels=4, out_channels=4, encoder_width=8, num_blocks=1, feature_dim=8,
                           text_dim=TEXT_DIM + PHYSICS_DIM, decoder_hidden=[8], qmri_compartments=1,
                           qmri_compartment_spread=1.6)


def test_finish_rendered_volume_applies_the_mri_contract() -> None:
    from predictor_fixtures import make_plans
    from unisyn_v2.models.rendering import finish_rendered_volume
    from unisyn_v2.networks.slice_adapter import SlicesAsChannels

    plans = make_plans(("T1w", "T2w", "CT"))
    volume = np.random.default_rng(0).uniform(0.02, 0.4, (6, 10, 10)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[1:5, 2:8, 2:8] = True
    finished = finish_rendered_volume(SlicesAsChannels(_network()), volume, mask, T2W, plans)
    low, high = np.percentile(finished[mask], [0.5, 99.5])
    assert low == pytest.approx(0.0, abs=1e-5) and high == pytest.approx(1.0, abs=1e-5)
    ct = ImageDescription("CT", ImageMetadata(kvp=120.0))
    assert finish_rendered_volume(_network(), volume, mask, ct, plans) is volume  # decoded, already on its scale
    assert finish_rendered_volume(torch.nn.Identity(), volume, mask, T2W, plans) is volume  # not a qMRI network


def test_train_then_predict_with_export_qmaps(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    from raw_fixtures import write_blob_dataset
    from training_fixtures import write_text_encoder

    from unisyn_v2.cli import predict as predict_cli
    from unisyn_v2.dataset.image_io import read_geometry, read_image
    from unisyn_v2.experiment_planning.api import plan_and_preprocess
    from unisyn_v2.training.run_training import run_training
    from unisyn_v2.training.settings import TrainerSettings

    write_blob_dataset(unisyn_dirs["raw"] / "Dataset001_Blob", num_cases=3, modalities=("T1w", "T2w", "CT"))
    plans = plan_and_preprocess(1, planner="cpu", num_processes=1, progress=False)
    write_text_encoder(unisyn_dirs["results"], plans)
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0,
                               max_validation_cases=1, validation_figures=0)
    trainer = run_training(1, "gfm_qmri", 0, "2.5d", device="cpu", settings=settings)
    info = json.loads((trainer.model_folder / "trainer.json").read_text())
    assert info["network"]["kind"] == "gfm_qmri" and info["conditioning"]["kind"] == "text_physics"
    summary = json.loads((trainer.fold_folder / "validation" / "summary.json").read_text())
    assert np.isfinite(summary["tasks"]["CT->T2w"]["mean"]["psnr"])  # the rendered T2w, scored on the contract's scale

    raw = unisyn_dirs["raw"] / "Dataset001_Blob" / "case_002"
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(raw / "case_002_CT.nii.gz", inputs)
    shutil.copy(raw / "case_002_brainmask.nii.gz", inputs)
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"modality": "T2w", "metadata": {"field_strength": 1.5, "repetition_time": 5000.0,
                                                                   "echo_time": 150.0, "flip_angle": 90.0}}))
    argv = ["-i", str(inputs), "-o", str(out), "-d", "1", "-tr", "gfm_qmri", "-c", "2.5d", "-f", "0", "--target", str(target),
            "--export_qmaps", "--disable_progress_bar"]
    assert predict_cli.main(argv) == 0
    synthesis, _ = read_image(out / "case_002_T2w.nii.gz")
    mask = read_image(raw / "case_002_brainmask.nii.gz")[0] > 0
    assert np.percentile(synthesis[mask], 99.5) == pytest.approx(1000.0, rel=0.05)  # the MRI contract, x 1000
    record = json.loads((out / "case_002_qmaps.json").read_text())
    assert record["maps"]["T1"]["unit"] == "ms" and record["t1_field_strength_T"] == 1.5
    for name, (low, high) in {"PD": (0.0, 1.5), "T1": (T1_RANGE_MS[0] * 0.5, T1_RANGE_MS[1]), "T2": T2_RANGE_MS,
                              "T2star": (0.0, T2_RANGE_MS[1])}.items():
        path = out / f"case_002_qmap-{name}.nii.gz"
        assert read_geometry(path).matches(read_geometry(raw / "case_002_CT.nii.gz")), name
        values = read_image(path)[0][mask]
        assert np.isfinite(values).all() and low < values.min() and values.max() < high, name


def test_export_qmaps_needs_a_qmri_model(unisyn_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from predictor_fixtures import head_phantom, make_plans, stand_in_loader, write_case_image, write_model_folder

    from unisyn_v2.cli import predict as predict_cli
    from unisyn_v2.inference import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "load_fold", stand_in_loader)
    write_model_folder(unisyn_dirs["results"] / "Dataset001_Stand", make_plans(), network="constant:0.5", folds=("0",))
    write_case_image(tmp_path / "in" / "sub-01_T1w.nii.gz", head_phantom((14, 18, 18), 0.0, 500.0, 150.0))
    argv = ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "1", "-c", "3d", "--target", "CT", "--export_qmaps"]
    assert predict_cli.main(argv) == 2
    assert "no quantitative-map head" in capsys.readouterr().err
