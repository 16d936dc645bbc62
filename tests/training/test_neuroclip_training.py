"""NeuroCLIPTrainer on a tiny synthetic preprocessed dataset: outputs, artifact, resume, and learning."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from neuroclip_fixtures import DATASET_NAME, PLANS_NAME, toy_plans, write_toy_dataset, one_torch_thread  # noqa: F401 (autouse)
from unisyn_v2.networks.text_artifact import load_text_encoder_artifact
from unisyn_v2.training.checkpointing import load_checkpoint
from unisyn_v2.training.neuroclip_trainer import NeuroCLIPTrainer
from unisyn_v2.training.settings import TrainerSettings




@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("neuroclip")
    folder, _plans = write_toy_dataset(root / "preprocessed", num_cases=12, shape=(36, 36, 36))
    return folder, root / "results"


def _trainer(toy: tuple[Path, Path], name: str, fold: int | str = "all", epochs: int = 2, iterations: int = 3,
             **settings: Any) -> NeuroCLIPTrainer:
    folder, results = toy
    plans = toy_plans(num_epochs=epochs, iterations_per_epoch=iterations)
    model_folder = results / name / DATASET_NAME / f"NeuroCLIPTrainer__{PLANS_NAME}__neuroclip"
    return NeuroCLIPTrainer(plans, "neuroclip", fold, DATASET_NAME, folder, model_folder, torch.device("cpu"),
                            TrainerSettings(num_workers=0, **settings))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(toy: tuple[Path, Path]) -> tuple[NeuroCLIPTrainer, dict[str, Any]]:
    """A quick fold-'all' run: 8 epochs x 10 class-balanced batches (about 20 s on one core)."""
    trainer = _trainer(toy, "quick", epochs=8, iterations=10)
    summary = trainer.run()
    assert summary is not None
    return trainer, summary


def test_quick_run_learns_retrieval_well_above_chance(trained: tuple[NeuroCLIPTrainer, dict[str, Any]]) -> None:
    _trainer_, summary = trained
    # 6 modalities (chance 1/6) and 10 candidate prompts (chance 1/10); measured 0.92 and 0.67
    assert summary["image_to_modality_top1"] >= 0.5
    assert summary["image_to_text_top1"] >= 0.25


def test_run_writes_checkpoints_summary_and_artifact(trained: tuple[NeuroCLIPTrainer, dict[str, Any]]) -> None:
    trainer, summary = trained
    fold = trainer.fold_folder
    for name in ("checkpoint_final.pth", "training_log.txt", "progress.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    written = json.loads((fold / "validation" / "summary.json").read_text())
    # fold "all" validates on 2 held-out cases (12 images) and trains on the other 10 (60 images)
    assert written["final"] and written["epoch"] == 8 and written["num_images"] == 12
    assert written["num_train_images"] == 60 and not written["validates_on_training_images"]
    for key in ("image_to_text_top1", "image_to_modality_top1", "parameter_sensitivity"):
        assert key in written and key in summary
    assert written["image_to_text_num_candidates"] == 10 and written["image_to_modality_chance"] == pytest.approx(1 / 6)
    assert "te_pc1_spearman" in written["parameter_sensitivity"]
    log = (fold / "training_log.txt").read_text()
    assert "val_i2m_top1" in log and "val_i2t_top1" in log
    info = json.loads((trainer.model_folder / "trainer.json").read_text())
    assert info["text_encoder_artifact"] == "text_encoder" and set(info["typical_metadata"]) == set(info["modalities"])
    assert info["network"]["text_encoder"]["embed_dim"] == trainer.plans.text_encoder.embed_dim

    tokenizer, encoder = load_text_encoder_artifact(trainer.model_folder / "text_encoder")
    assert tokenizer == trainer.tokenizer
    prompts = [s.prompt for s in trainer.val_samples[:5]]
    with torch.no_grad():
        expected = trainer.clip.eval().encode_text(tokenizer.encode_batch(prompts))
        assert torch.allclose(encoder(tokenizer.encode_batch(prompts)), expected, atol=1e-5)
    config = json.loads((trainer.model_folder / "text_encoder" / "config.json").read_text())
    assert config["dataset_name"] == DATASET_NAME and config["epochs_trained"] == 8
    assert config["validation"]["image_to_modality_top1"] == summary["image_to_modality_top1"]


def test_resume_matches_an_uninterrupted_run(toy: tuple[Path, Path]) -> None:
    straight = _trainer(toy, "straight", fold=0, final_validation=False)
    straight.run()
    first = _trainer(toy, "resumed", fold=0, final_validation=False, num_epochs=1)
    first.run()
    assert (first.fold_folder / "text_encoder" / "config.json").is_file()  # numbered fold keeps its own copy
    assert (first.model_folder / "text_encoder" / "config.json").is_file()  # and fills the empty canonical one
    second = _trainer(toy, "resumed", fold=0, final_validation=False, num_epochs=2, continue_training=True)
    second.run()
    a = load_checkpoint(straight.fold_folder / "checkpoint_final.pth")["network_weights"]
    b = load_checkpoint(second.fold_folder / "checkpoint_final.pth")["network_weights"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
