"""Short end-to-end runs on the toy dataset: GFM, the CLI, the U-Net baseline and the model-folder loader."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training_fixtures import DATASET_NAME, MODALITIES, write_text_encoder, write_training_dataset
from unisyn_v2.cli.train import main
from unisyn_v2.models.folder import load_trained_model
from unisyn_v2.training.run_training import run_training
from unisyn_v2.training.settings import TrainerSettings
from unisyn_v2.networks.slice_adapter import volume_network

ALL_TASKS = sorted(f"{s}->{t}" for s in MODALITIES for t in MODALITIES if s != t)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def toy(unisyn_dirs: dict[str, Path]) -> dict[str, Path]:
    _folder, plans = write_training_dataset(unisyn_dirs["preprocessed"])
    write_text_encoder(unisyn_dirs["results"], plans)
    return unisyn_dirs


def test_gfm_end_to_end_and_model_folder_loader(toy: dict[str, Path]) -> None:
    settings = TrainerSettings(num_epochs=2, iterations_per_epoch=3, num_workers=0, validation_figures=1)
    trainer = run_training("902", "gfm", 0, device="cpu", settings=settings)
    model = toy["results"] / DATASET_NAME / "GFMTrainer__unisynPlans__2.5d"
    fold = model / "fold_0"
    assert trainer.fold_folder == fold
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "training_log.txt",
                 "validation/summary.json"):
        assert (fold / name).is_file(), name
    assert len(list((fold / "validation").glob("*.png"))) == 1
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "trainer.json",
                 "text_encoder/config.json", "text_encoder/tokenizer.json", "text_encoder/weights.pt"):
        assert (model / name).is_file(), name
    log = (fold / "training_log.txt").read_text()
    assert "epoch 2/2" in log and "val_psnr" in log

    summary = json.loads((fold / "validation/summary.json").read_text())
    assert summary["protocol"] == "reference" and summary["num_cases"] == 1
    assert sorted(summary["tasks"]) == ALL_TASKS
    task = summary["tasks"]["T1w->CT"]
    brain = {"psnr", "ssim", "mae", "papers_psnr", "papers_ssim"}
    head = {"head_psnr", "head_ssim", "head_mae"}
    assert set(task["mean"]) == brain | head | {"head_mae_hu", "head_psnr_synthrad", "bone_dice", "bone_mae"}
    assert set(summary["tasks"]["CT->T1w"]["mean"]) == brain | head  # bone metrics are for CT targets only
    assert set(task["baselines"]) == {"identity", "histogram_matching"}
    assert task["cases"][0]["case_id"] == trainer.val_cases[0]
    assert set(summary["mean_over_tasks"]) == {"model", "identity", "histogram_matching"}

    info = json.loads((model / "trainer.json").read_text())
    assert info["trainer_class"] == "unisyn_v2.training.gfm_trainer:GFMTrainer" and info["trainer_name"] == "gfm"
    assert info["network"]["kind"] == "gfm" and info["conditioning"]["kind"] == "text"
    assert info["conditioning"]["text_encoder"] == "text_encoder" and info["is_slab"] is True
    assert info["modalities"] == sorted(MODALITIES) and sorted(info["tasks"]) == ALL_TASKS
    assert info["typical_metadata"]["CT"]["kvp"] == 120.0

    network, conditioner, loaded_info, plans = load_trained_model(model, 0)
    assert loaded_info == info and plans.plans_name == "unisynPlans"
    expected = trainer.network.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in network.network.state_dict().items())
    reference = volume_network(trainer.network, True).eval()
    x = torch.rand(2, 1, 4, 16, 16)
    from unisyn_v2.training.data.cases import CaseCollection

    descriptions = CaseCollection(trainer.data_folder, ["case_000"]).cases["case_000"].descriptions
    s, t = conditioner.embed(descriptions[:1] * 2), conditioner.embed(descriptions[1:2] * 2)
    with torch.no_grad():
        expected_s = trainer.conditioner.embed(descriptions[:1] * 2)
        assert torch.allclose(s, expected_s, atol=1e-6)  # (the cache may have embedded it in another batch)
        assert torch.equal(network(x, s, t).synthesis, reference(x, s, t).synthesis)


def test_cli_crossattn_then_validation_only(toy: dict[str, Path]) -> None:
    args = ["902", "crossattn", "1", "--epochs", "1", "--iterations_per_epoch", "2", "--num_workers", "0",
            "--validation_figures", "0"]
    assert main(args) == 0
    fold = toy["results"] / DATASET_NAME / "CrossAttnBaselineTrainer__unisynPlans__2.5d" / "fold_1"
    summary = fold / "validation" / "summary.json"
    first = json.loads(summary.read_text())
    summary.unlink()
    assert main(args + ["--val"]) == 0
    again = json.loads(summary.read_text())
    assert again["tasks"]["CT->T1w"]["mean"] == pytest.approx(first["tasks"]["CT->T1w"]["mean"], rel=1e-6)


def test_missing_text_encoder_says_to_train_neuroclip(unisyn_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    write_training_dataset(unisyn_dirs["preprocessed"])
    assert main(["902", "gfm", "0", "--epochs", "1", "--num_workers", "0"]) == 2
    assert f"unisyn_train {DATASET_NAME} neuroclip" in capsys.readouterr().err


def test_unet_baseline_on_one_task_in_3d(toy: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="--tasks"):
        run_training("902", "unet", 0, configuration="3d", device="cpu", settings=TrainerSettings(num_workers=0))
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=2, num_workers=0, tasks=(("T1w", "CT"),),
                               validation_figures=0)
    trainer = run_training(DATASET_NAME, "unet", "all", configuration="3d", device="cpu", settings=settings)
    assert trainer.model_folder.name == "UNetBaselineTrainer_T1w-to-CT__unisynPlans__3d"
    summary = json.loads((trainer.fold_folder / "validation/summary.json").read_text())
    assert list(summary["tasks"]) == ["T1w->CT"] and summary["num_cases"] == 5
    network, conditioner, info, _plans = load_trained_model(trainer.model_folder, "all")
    assert conditioner is None and info["conditioning"] == {"kind": "none"}
    assert network(torch.rand(1, 1, 8, 16, 16)).synthesis.shape == (1, 1, 8, 16, 16)
