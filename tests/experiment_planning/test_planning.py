"""Fingerprint, planning rules, presets and preprocessing on a small dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raw_fixtures import write_blob_dataset
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.experiment_planning import api
from unisyn_v2.experiment_planning.planner import (
    ct_brain_window, determine_target_spacing, estimate_synthesis_memory_bytes, fit_patch_and_batch, network_kwargs, unet_kwargs,
)
from unisyn_v2.contracts.plans import Plans, PlansError
from unisyn_v2.experiment_planning.presets import get_preset
from unisyn_v2.experiment_planning.splits import make_splits
from unisyn_v2.networks.factory import build_synthesis_network, count_parameters, paper_gfm_kwargs
from unisyn_v2.preprocessing.case_preprocessor import restore_prediction
from unisyn_v2.preprocessing.case_store import load_preprocessed_case


@pytest.fixture
def planned(unisyn_dirs: dict[str, Path]) -> tuple[Plans, Path]:
    write_blob_dataset(unisyn_dirs["raw"] / "Dataset002_Blob", num_cases=4)
    plans = api.plan_and_preprocess(2, num_processes=1, progress=False)
    return plans, unisyn_dirs["preprocessed"] / "Dataset002_Blob"


def test_pipeline_writes_every_artifact(planned: tuple[Plans, Path]) -> None:
    plans, pre = planned
    for name in ("dataset_fingerprint.json", "unisynPlans.json", "splits_final.json", "dataset.json"):
        assert (pre / name).is_file(), name
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert set(fingerprint["modalities"]) == {"T1w", "CT", "FDG-PET"}
    ct = fingerprint["modalities"]["CT"]["foreground_intensities"]
    assert 20 < ct["percentile_50_0"] < 50  # brain voxels only, in HU
    window = plans.normalization["CT"]
    assert window.scheme == "ct_brain_window"
    assert window.kwargs["window_low"] < ct["percentile_00_5"] < ct["percentile_99_5"] < window.kwargs["window_high"]
    assert fingerprint["modalities"]["FDG-PET"]["typical_metadata"]["unit"] == "SUV"
    assert Plans.load(pre / "unisynPlans.json") == plans
    case = load_preprocessed_case(pre / "unisynPlans_data", "case_000")
    assert case.data.shape[0] == 3 and case.data.shape[1:] == case.mask.shape
    assert plans.preset == "cpu"


def test_rerun_skips_finished_cases_and_redoes_changed_ones(planned: tuple[Plans, Path], unisyn_dirs: dict[str, Path]) -> None:
    _plans, pre = planned
    folder = pre / "unisynPlans_data"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    (folder / "case_001.json").unlink()  # an interrupted case
    api.preprocess(2, num_processes=1, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert after["case_000.npy"] == stamps["case_000.npy"]
    assert after["case_001.npy"] != stamps["case_001.npy"]


def test_ct_round_trip_to_hu(planned: tuple[Plans, Path], unisyn_dirs: dict[str, Path]) -> None:
    plans, pre = planned
    case = load_preprocessed_case(pre / "unisynPlans_data", "case_002")
    restored, unit = restore_prediction(case.data[case.channel_of("CT")], case.properties, plans, "CT")
    original, _ = read_image(unisyn_dirs["raw"] / "Dataset002_Blob/case_002/case_002_CT.nii.gz")
    assert unit == "HU"
    assert np.abs(restored - original).max() < 0.5


def test_ct_brain_window_from_the_fingerprint() -> None:
    stats = {"foreground_intensities": {"percentile_00_5": 0.0, "percentile_99_5": 60.0}}
    assert ct_brain_window(stats) == {"window_low": -15.0, "window_high": 75.0, "clip_low": -1024.0, "clip_high": 3071.0}
    narrow = ct_brain_window({"foreground_intensities": {"percentile_00_5": 30.0, "percentile_99_5": 40.0}})
    assert (narrow["window_low"], narrow["window_high"]) == (15.0, 55.0)  # widened to CT_MIN_WINDOW_HU
    assert ct_brain_window({})["window_low"] < 0.0 < 80.0 < ct_brain_window({})["window_high"]  # no statistics


def test_target_spacing_rules() -> None:
    iso = determine_target_spacing(np.array([[1.0, 1.0, 1.0], [1.2, 1.0, 1.0]]), np.array([[100, 100, 100]] * 2))
    assert iso == pytest.approx((1.1, 1.0, 1.0))
    spacings = np.array([[5.0, 1.0, 1.0], [6.0, 1.0, 1.0], [4.0, 1.0, 1.0]])
    shapes = np.array([[20, 200, 200]] * 3)
    aniso = determine_target_spacing(spacings, shapes)
    assert aniso[0] < 5.0 and aniso[1:] == (1.0, 1.0)


def test_more_memory_gives_larger_batch_or_patch() -> None:
    preset = get_preset("small")
    median = (120, 140, 120)
    small = fit_patch_and_batch(preset, True, median, 2 * 1024**3, 256)
    large = fit_patch_and_batch(preset, True, median, 16 * 1024**3, 256)
    assert np.prod(large[0]) * large[1] > np.prod(small[0]) * small[1]
    assert small[1] >= 2 and large[2] <= 16 * 1024**3
    tiny = fit_patch_and_batch(preset, True, median, 0.3 * 1024**3, 256)
    assert np.prod(tiny[0]) < np.prod(small[0])  # patch shrinks once batch 2 no longer fits


def test_paper_preset_reproduces_the_paper() -> None:
    preset = get_preset("paper")
    patch, batch, used = fit_patch_and_batch(preset, True, (180, 220, 180), 40 * 1024**3, 1536)
    assert patch == (8, 64, 64) and batch == 8
    from unisyn_v2.experiment_planning.planner import network_kwargs

    kwargs = network_kwargs(preset, True, patch, 1536)
    assert {k: kwargs[k] for k in paper_gfm_kwargs() if k in kwargs} == {k: v for k, v in paper_gfm_kwargs().items() if k in kwargs}
    import torch

    with torch.device("meta"):
        network = build_synthesis_network("gfm", kwargs)
    assert 4.5e8 < count_parameters(network) < 4.7e8  # 24 blocks x 2 convs x 1024^2 x 9 dominate


def test_cpu_preset_dilates_its_blocks_and_skips_the_input_and_the_paper_preset_does_not() -> None:
    from unisyn_v2.experiment_planning.planner import network_kwargs

    cpu, paper = get_preset("cpu"), get_preset("paper")
    kwargs = network_kwargs(cpu, True, cpu.slab_patch, 64)
    assert kwargs["encoder_dilations"] == list(cpu.encoder_dilations) and len(kwargs["encoder_dilations"]) == cpu.num_blocks
    assert build_synthesis_network("gfm", kwargs).encoder.receptive_field == 63
    assert build_synthesis_network("crossattn", kwargs).encoder.receptive_field == 63
    assert kwargs["encoder_input_skip"] is True
    assert build_synthesis_network("gfm", kwargs).encoder.input_skip
    assert build_synthesis_network("crossattn", kwargs).encoder.input_skip
    paper_kwargs = network_kwargs(paper, True, paper.slab_patch, 1536)
    assert "encoder_dilations" not in paper_kwargs and "encoder_input_skip" not in paper_kwargs


def test_unet_kwargs_divide_patch() -> None:
    kwargs = unet_kwargs(get_preset("cpu"), False, (32, 48, 40))
    total = np.prod(np.array(kwargs["strides"]), axis=0)
    assert all(size % stride == 0 for size, stride in zip((32, 48, 40), total))


def test_splits_are_reproducible_and_disjoint() -> None:
    ids = [f"c{i}" for i in range(11)]
    splits = make_splits(ids)
    assert splits == make_splits(list(reversed(ids)))
    assert sorted(sum((s["val"] for s in splits), [])) == sorted(ids)
    assert all(not set(s["train"]) & set(s["val"]) for s in splits)


def test_newer_plans_version_is_refused(planned: tuple[Plans, Path]) -> None:
    plans, pre = planned
    data = plans.to_dict()
    data["format_version"] = 99
    with pytest.raises(PlansError, match="newer"):
        Plans.from_dict(data, source="x.json")
    data["format_version"] = 1
    del data["configurations"]["2.5d"]["batch_size"]
    with pytest.raises(PlansError, match=r"configurations.2.5d.batch_size"):
        Plans.from_dict(data, source="x.json")


def test_plans_refuse_an_unknown_feature_loss_or_value_code(planned: tuple[Plans, Path]) -> None:
    plans, _ = planned
    for section, key, value in (("training", "feature_loss", "l2"), ("text_encoder", "value_centres", 0),
                                ("text_encoder", "value_weight", -1.0)):
        data = plans.to_dict()
        data[section][key] = value
        with pytest.raises(PlansError, match=rf"{section}.{key}"):
            Plans.from_dict(data, source="x.json")


def test_memory_estimate_covers_the_heavier_of_gfm_and_crossattn() -> None:
    """Checked against quantities computed without the estimator: the optimiser state of the larger network (weights,
    gradients and Adam's two moments in fp32) and the activations kept for backward, which grow with the batch."""
    patch = (4, 48, 48)
    kwargs = network_kwargs(get_preset("cpu"), True, patch, text_dim=64)
    parameters = {kind: sum(p.numel() for p in build_synthesis_network(kind, kwargs).parameters())
                  for kind in ("gfm", "crossattn")}
    assert parameters["crossattn"] > parameters["gfm"]  # the fusion block's feed-forward
    two, four = (estimate_synthesis_memory_bytes(kwargs, patch, True, batch) for batch in (2, 4))
    assert two >= 16 * parameters["crossattn"]  # the crossattn's optimiser state alone fits under the estimate
    one_feature_map = 4 * kwargs["feature_dim"] * patch[1] * patch[2]  # fp32 bytes of one sample's f0
    assert four - two >= 2 * 2 * one_feature_map  # two more samples, two forward passes, at least f0 each

def _one_modality_fingerprint() -> dict:
    case = {"spacing_zyx": [1.0, 1.0, 1.0], "shape_after_crop_zyx": [150, 180, 150]}
    return {"dataset_name": "Dataset999_Memory", "cases": {"a": case, "b": case},
            "modalities": {"T1w": {"foreground_intensities": {}, "typical_metadata": {}}}}


def test_auto_picks_the_paper_preset_where_it_fits_at_training_precision() -> None:
    from unisyn_v2.experiment_planning.planner import choose_preset, plan_experiment

    assert choose_preset("auto", 80, (150, 180, 150)).name == "paper"
    assert choose_preset("auto", 16, (150, 180, 150)).name != "paper"
    assert choose_preset("auto", 40, (150, 180, 150), "fp16").name == "paper"  # the paper's A100 40 GB, fp16
    assert choose_preset("auto", 40, (150, 180, 150), "fp32").name != "paper"
    plans = plan_experiment(_one_modality_fingerprint(), "auto", 80, configurations=("2.5d",))
    config = plans.configuration("2.5d")
    assert plans.preset == "paper" and config.memory_precision == "fp16" and config.batch_size == 8
    assert Plans.from_dict(plans.to_dict()).configuration("2.5d").memory_precision == "fp16"
    cpu = plan_experiment(_one_modality_fingerprint(), "auto", None, configurations=("2.5d",))
    assert cpu.preset == "cpu" and cpu.configuration("2.5d").memory_precision == "fp32"


def test_new_plans_resample_images_with_cubic_splines() -> None:
    from unisyn_v2.experiment_planning.planner import plan_experiment

    plans = plan_experiment(_one_modality_fingerprint(), "cpu", None, configurations=("2.5d",))
    assert plans.resampling["image_order"] == 3 and plans.resampling["mask_order"] == 0


def test_plan_options_of_the_command_line_reach_the_plans(unisyn_dirs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from unisyn_v2.cli.plan_and_preprocess import plan_and_preprocess_main

    write_blob_dataset(unisyn_dirs["raw"] / "Dataset002_Blob", num_cases=3)
    args = ["-d", "2", "--no_pp", "-np", "1", "--no_pbar", "--loss_region", "pet=head", "--lesion_oversample", "0.66",
            "--lesion_weight", "5", "--neuroclip_image_encoder", "vit", "--decoder_3d", "liif"]
    assert plan_and_preprocess_main(args) == 0
    plans = Plans.load(unisyn_dirs["preprocessed"] / "Dataset002_Blob" / "unisynPlans.json")
    assert plans.loss_region("PET") == "head" and plans.loss_region("CT") == "head" and plans.loss_region("MRI") == "brain"
    assert (plans.training.lesion_oversample, plans.training.lesion_weight) == (0.66, 5.0)
    assert plans.neuroclip.image_encoder == "vit"
    assert plans.configuration("3d").network_kwargs["decoder"] == "liif"
    assert plans.configuration("2.5d").network_kwargs.get("decoder", "conv") == "conv"  # LIIF is 3D only
    capsys.readouterr()
    assert plan_and_preprocess_main(["-d", "2", "--no_pp", "-np", "1", "--loss_region", "CT=skull"]) != 0
    assert "training.loss_region.CT" in capsys.readouterr().err  # refused with the field named, nothing written
