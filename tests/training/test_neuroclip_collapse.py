"""No silent collapse (issue 16): the guard's decisions, the held-out split of fold "all", and collapses
provoked on the tiny NeuroCLIP dataset (a huge learning rate, a text encoder that outputs a constant)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from neuroclip_fixtures import DATASET_NAME, PLANS_NAME, toy_plans, write_toy_dataset, one_torch_thread  # noqa: F401 (autouse)
from unisyn_v2.cli.train import main as train_main
from unisyn_v2.networks.neuroclip import NeuroCLIP
from unisyn_v2.training.checkpointing import load_checkpoint
from unisyn_v2.training.collapse_guard import (
    BAD, FAIL, GOOD, GOOD_CHECKPOINT, GRACE, GUARD_FILE, RECOVER, RESTORE_FINAL, UNJUDGED_FINAL, CollapseGuard,
    CollapseGuardConfig, EpochCheck, NeuroCLIPCollapseError, mean_pairwise_cosine, select_probe,
)
from unisyn_v2.training.neuroclip_data import NeuroCLIPSample, holdout_cases
from unisyn_v2.training.neuroclip_trainer import SPLIT_FILE, NeuroCLIPTrainer
from unisyn_v2.training.settings import TrainerSettings

CHANCE = math.log(7)


def _check(epoch: int, loss: float = 1.0, text: float = 0.3, image: float = 0.3) -> EpochCheck:
    return EpochCheck(epoch, loss, CHANCE, text, image)


# ------------------------------------------------------------- the guard
def test_guard_counts_symptoms_after_the_grace_epochs_and_recovers_then_fails() -> None:
    guard = CollapseGuard(CollapseGuardConfig(patience=2, max_recoveries=1, lr_factor=0.3), grace_epochs=2)
    collapsed = {"loss": CHANCE, "text": 0.9999}
    verdicts = [guard.observe(_check(e, **collapsed), final_epoch=False) for e in range(1, 7)]
    # epochs 1-2 in grace, 3-4 counted -> recover, 5-6 counted again -> the one recovery is spent
    assert verdicts == [GRACE, GRACE, BAD, RECOVER, BAD, FAIL]
    assert guard.recoveries == 1 and guard.lr_scale == pytest.approx(0.3)
    assert guard.history[3]["symptoms"] == ["loss at chance", "text collapse"]
    message = guard.failure_message("results/fold_all", 7.0, 1e-3, 0.2)
    assert "\n" not in message and "results/fold_all" in message
    assert "loss 1.946 at chance ln 7 = 1.946 for 2 epochs" in message and "cosine 0.9999" in message
    for advice in ("lower the learning rate", "warm-up", "more varied prompts", "larger batch"):
        assert advice in message


def test_guard_once_armed_counts_at_once_and_restores_the_last_good_weights_at_the_end() -> None:
    guard = CollapseGuard(CollapseGuardConfig(patience=3), grace_epochs=5)
    assert guard.observe(_check(1), final_epoch=False) == GOOD
    assert guard.observe(_check(2, image=0.999), final_epoch=False) == BAD  # inside the grace, but armed
    assert guard.observe(_check(3, loss=float("nan")), final_epoch=True) == RESTORE_FINAL
    assert guard.last_good_epoch == 1 and guard.status() == "restored"
    assert guard.events[-1]["action"] == "restore_final"


def test_guard_leaves_a_healthy_run_alone_and_a_too_short_run_unjudged() -> None:
    guard = CollapseGuard(CollapseGuardConfig(), grace_epochs=1)
    losses = [1.9, 1.7, 1.5, 1.2, 1.0]
    assert [guard.observe(_check(e + 1, loss), e == 4) for e, loss in enumerate(losses)] == [GOOD] * 5
    assert guard.summary()["status"] == "ok" and guard.recoveries == 0
    short = CollapseGuard(CollapseGuardConfig(), grace_epochs=1)
    assert short.observe(_check(1, loss=CHANCE), final_epoch=False) == GRACE
    assert short.observe(_check(2, loss=CHANCE), final_epoch=True) == UNJUDGED_FINAL


def test_guard_without_recoveries_stops_at_the_first_detection_and_survives_a_checkpoint() -> None:
    guard = CollapseGuard(CollapseGuardConfig(patience=1, max_recoveries=0), grace_epochs=0)
    assert guard.observe(_check(1, image=1.0), final_epoch=False) == FAIL
    assert "recovery is off" in guard.failure_message("x", 7, 1e-3, 0.2) and guard.status() == "failed"
    clone = CollapseGuard(guard.config, 0)
    clone.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert clone.state_dict() == guard.state_dict()
    with pytest.raises(ValueError, match="unknown setting"):
        CollapseGuardConfig().with_overrides({"patiance": 2})
    with pytest.raises(ValueError, match="lr_factor"):
        CollapseGuardConfig(lr_factor=0.0)


def test_mean_pairwise_cosine_and_probe_selection() -> None:
    assert mean_pairwise_cosine(torch.ones(4, 8)) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(5)) == pytest.approx(0.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    samples = [NeuroCLIPSample(f"c{i}", ch, "T1w", f"prompt {i} {ch}", f"class{(i + ch) % 5}", {}, {})
               for i in range(4) for ch in range(3)]
    probe = select_probe(samples, 16)
    assert [s.class_key for s in probe] == [f"class{k}" for k in range(5)]
    assert len({s.prompt for s in probe}) == 5
    assert select_probe(samples, 16) == probe  # fixed
    assert [s.class_key for s in select_probe(samples, 3)] == ["class0", "class2", "class4"]


def test_holdout_split_is_fixed_disjoint_and_complete() -> None:
    ids = [f"case_{i:03d}" for i in range(20)]
    train, val = holdout_cases(ids, 0.2)
    assert len(val) == 4 and not set(train) & set(val) and sorted(train + val) == ids
    assert holdout_cases(list(reversed(ids)), 0.2) == (train, val)  # order-independent, no seed
    assert len(holdout_cases(ids[:2], 0.2)[1]) == 1 and len(holdout_cases(ids[:3], 0.9)[0]) == 1
    assert holdout_cases(ids[:1], 0.2) == (ids[:1], ids[:1])
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_cases(ids, 1.0)


# ------------------------------------------------------ tiny NeuroCLIP runs


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("neuroclip_collapse")
    folder, _plans = write_toy_dataset(root / "preprocessed", num_cases=10, shape=(36, 36, 36), seed=3)
    return folder, root / "results"


def _trainer(toy: tuple[Path, Path], name: str, lr: float, epochs: int, guard: dict[str, Any] | None = None,
             iterations: int = 5) -> NeuroCLIPTrainer:
    folder, results = toy
    plans = toy_plans(num_epochs=epochs, iterations_per_epoch=iterations, initial_lr=lr)
    model_folder = results / name / DATASET_NAME / f"NeuroCLIPTrainer__{PLANS_NAME}__neuroclip"
    extra = {"collapse_guard": guard} if guard is not None else {}
    return NeuroCLIPTrainer(plans, "neuroclip", "all", DATASET_NAME, folder, model_folder, torch.device("cpu"),
                            TrainerSettings(num_workers=0, extra=extra))


def _constant_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every prompt gets the same embedding: the collapse issue 16 saw, made certain."""
    def encode_text(self: NeuroCLIP, token_ids: torch.Tensor, eot_positions: Any = None) -> torch.Tensor:
        return F.normalize(torch.ones_like(self.text_encoder(token_ids, eot_positions)), dim=-1)
    monkeypatch.setattr(NeuroCLIP, "encode_text", encode_text)


def test_healthy_run_is_not_flagged_and_validates_on_held_out_cases(toy: tuple[Path, Path]) -> None:
    trainer = _trainer(toy, "healthy", lr=1e-3, epochs=5)
    summary = trainer.run()
    assert summary is not None and summary["collapse_guard"]["status"] == "ok"
    report = json.loads((trainer.fold_folder / GUARD_FILE).read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3, 4, 5] and report["recoveries"] == 0
    assert all(e["verdict"] in (GOOD, GRACE) for e in report["epochs"]) and report["epochs"][-1]["verdict"] == GOOD
    assert report["epochs"][-1]["text_cosine"] < 0.99 and report["epochs"][-1]["image_cosine"] < 0.99
    assert not (trainer.fold_folder / GOOD_CHECKPOINT).exists()  # only kept while training

    split = json.loads((trainer.fold_folder / SPLIT_FILE).read_text())
    assert split["num_val_cases"] == 2 and split["num_train_cases"] == 8 and not split["validates_on_training_images"]
    assert not set(split["train_cases"]) & set(split["val_cases"])
    train_images = {(s.case_id, s.channel) for s in trainer.train_samples}
    val_images = {(s.case_id, s.channel) for s in trainer.val_samples}
    assert val_images and not train_images & val_images and summary["num_images"] == len(val_images) == 12
    log = (trainer.fold_folder / "training_log.txt").read_text()
    assert "48 training images (8 cases)" in log and "12 validation images (2 held-out cases)" in log
    assert "NeuroCLIP probe, epoch 5" in log

    again = _trainer(toy, "healthy", lr=1e-3, epochs=5)  # --val reuses the recorded split
    again.settings.validation_only = True
    again.prepare_data()
    assert {s.case_id for s in again.val_samples} == set(split["val_cases"])


def test_huge_learning_rate_collapses_and_is_recovered_with_a_lower_one(toy: tuple[Path, Path]) -> None:
    # lr 0.1 kills the image tower at once (image embeddings at cosine 1, loss at ln K); back to the
    # initial weights with lr x0.01 it learns
    trainer = _trainer(toy, "recover", lr=0.1, epochs=6,
                       guard={"patience": 2, "grace_epochs": 1, "max_recoveries": 1, "lr_factor": 0.01})
    summary = trainer.run()
    assert summary is not None
    report = json.loads((trainer.fold_folder / GUARD_FILE).read_text())
    verdicts = [e["verdict"] for e in report["epochs"]]
    assert RECOVER in verdicts and verdicts[-1] == GOOD and report["status"] == "recovered"
    recovery = report["events"][0]
    assert recovery["action"] == "recover" and recovery["back_to_epoch"] == 0 and recovery["lr_scale"] == 0.01
    assert "image collapse" in recovery["symptoms"] and "loss at chance" in recovery["symptoms"]
    assert trainer.optimizer is not None
    assert trainer.optimizer.param_groups[0]["lr"] <= 0.1 * 0.01 + 1e-12
    assert "NeuroCLIP collapse at epoch" in (trainer.fold_folder / "training_log.txt").read_text()
    assert summary["collapse_guard"]["recoveries"] == 1
    saved = load_checkpoint(trainer.fold_folder / "checkpoint_final.pth")["extra"]["collapse_guard"]
    assert saved["recoveries"] == 1 and saved["lr_scale"] == 0.01  # --c keeps the recoveries spent


def test_same_collapse_without_recovery_stops_with_one_line(toy: tuple[Path, Path]) -> None:
    trainer = _trainer(toy, "norecover", lr=0.1, epochs=6,
                       guard={"patience": 2, "grace_epochs": 1, "max_recoveries": 0})
    with pytest.raises(NeuroCLIPCollapseError) as caught:
        trainer.run()
    message = str(caught.value)
    assert "\n" not in message and "collapsed in epochs 2-3" in message and "recovery is off" in message
    assert "image embeddings at mean cosine 1.0000" in message
    assert re.search(r"training loss \d\.\d{3} at chance ln \d+ = \d\.\d{3} for 2 epochs", message)
    assert json.loads((trainer.fold_folder / GUARD_FILE).read_text())["status"] == "failed"
    assert "ERROR" in (trainer.fold_folder / "training_log.txt").read_text()
    assert not (trainer.fold_folder / "text_encoder").exists() and not (trainer.model_folder / "text_encoder").exists()


def test_constant_text_encoder_exhausts_the_recoveries_and_the_cli_exits_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("raw", "preprocessed", "results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(f"UNISYN_{name.upper()}", str(tmp_path / name))
    write_toy_dataset(tmp_path / "preprocessed", num_cases=4, shape=(36, 36, 36),
                      plans=toy_plans(num_epochs=8, iterations_per_epoch=2))
    _constant_text(monkeypatch)
    # defaults: grace 2 epochs (20 % warm-up of 8), patience 3, 2 recoveries: recover at epoch 5, fail at 8
    code = train_main([DATASET_NAME, "neuroclip", "-p", PLANS_NAME, "--device", "cpu", "--num_workers", "0"])
    err = capsys.readouterr().err
    assert code == 2
    line = next(row for row in err.splitlines() if row.startswith("error: "))
    assert "collapsed in epochs 6-8" in line and "text embeddings of distinct prompts at mean cosine 1.0000" in line
    assert "1 of 2 recoveries" in line and "lower the learning rate" in line
    fold = tmp_path / "results" / DATASET_NAME / f"NeuroCLIPTrainer__{PLANS_NAME}__neuroclip" / "fold_all"
    report = json.loads((fold / GUARD_FILE).read_text())
    assert [e["verdict"] for e in report["epochs"]][-4:] == [RECOVER, BAD, BAD, FAIL]
    assert report["events"][0]["lr_scale"] == pytest.approx(0.3)
