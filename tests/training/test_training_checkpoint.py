"""Checkpoints: weights-only round trip, atomic writes, and bit-for-bit resume with --c."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from training_fixtures import make_trainer, write_training_dataset
from unisyn_v2.training.checkpointing import (
    capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint_atomic,
)
from unisyn_v2.training.variants import OneHotGFMTrainer

QUICK = {"num_epochs": 3, "iterations_per_epoch": 2, "validation_iterations": 1, "final_validation": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def toy(unisyn_dirs: dict[str, Path]) -> dict[str, Path]:
    write_training_dataset(unisyn_dirs["preprocessed"])
    return unisyn_dirs


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.network.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = save_checkpoint_atomic(tmp_path / "c.pth", {"network_weights": {}, "rng_state": state})
    restore_rng_state(load_checkpoint(path)["rng_state"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temp file left


def test_load_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save({"something": 1}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="not a unisyn_v2 checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_checkpoint_round_trip(toy: dict[str, Path]) -> None:
    trainer = make_trainer(OneHotGFMTrainer, toy, **{**QUICK, "num_epochs": 1})
    trainer.run()
    final = trainer.fold_folder / "checkpoint_final.pth"
    assert final.is_file() and (trainer.fold_folder / "checkpoint_best.pth").is_file()
    assert not (trainer.fold_folder / "checkpoint_latest.pth").exists()
    fresh = make_trainer(OneHotGFMTrainer, toy, **{**QUICK, "num_epochs": 1})
    fresh.load_checkpoint(final)
    _assert_same(_weights(trainer), _weights(fresh))
    assert fresh.current_epoch == 1 and fresh.best_metric == trainer.best_metric
    saved, loaded = trainer.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for key, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][key][name]))
    assert fresh.train_loader.state_dict() == {"next_index": 2}
    assert fresh.progress.values == trainer.progress.values


class _Killed(Exception):
    pass


class _KilledTrainer(OneHotGFMTrainer):
    """Dies at the start of epoch 3, after epoch 2's checkpoint_latest was written."""

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 2:
            raise _Killed


def test_resume_is_bit_for_bit(toy: dict[str, Path], unisyn_dirs: dict[str, Path]) -> None:
    reference = make_trainer(OneHotGFMTrainer, toy, **QUICK)
    reference.run()
    expected = _weights(reference)
    expected_lr = reference.optimizer.param_groups[0]["lr"]

    killed = make_trainer(_KilledTrainer, toy, **QUICK)
    with pytest.raises(_Killed):
        killed.run()
    latest = killed.fold_folder / "checkpoint_latest.pth"
    assert latest.is_file() and not (killed.fold_folder / "checkpoint_final.pth").exists()
    assert load_checkpoint(latest)["current_epoch"] == 2
    with pytest.raises(AssertionError):
        _assert_same(expected, _weights(killed))

    resumed = make_trainer(OneHotGFMTrainer, toy, **QUICK, continue_training=True)
    resumed.model_folder = killed.model_folder
    resumed.fold_folder = killed.fold_folder
    resumed.run()
    _assert_same(expected, _weights(resumed))
    assert resumed.optimizer.param_groups[0]["lr"] == expected_lr
    assert resumed.current_epoch == 3
    assert resumed.progress.values["train_loss"] == reference.progress.values["train_loss"]
    log = (resumed.fold_folder / "training_log.txt").read_text()
    assert "checkpoint_latest.pth (epoch 2)" in log and "epoch 3/3" in log


def test_continue_after_final_and_pretrained_weights(toy: dict[str, Path]) -> None:
    first = make_trainer(OneHotGFMTrainer, toy, **{**QUICK, "num_epochs": 1})
    first.run()
    again = make_trainer(OneHotGFMTrainer, toy, **{**QUICK, "num_epochs": 1}, continue_training=True)
    again.run()  # loads checkpoint_final and has nothing left to train
    _assert_same(_weights(first), _weights(again))
    pretrained = make_trainer(OneHotGFMTrainer, toy, fold=1, **{**QUICK, "num_epochs": 1},
                              pretrained_weights=first.fold_folder / "checkpoint_final.pth")
    pretrained.initialize()
    pretrained.load_pretrained_weights(pretrained.settings.pretrained_weights)
    _assert_same(_weights(first), _weights(pretrained))
    assert pretrained.current_epoch == 0
