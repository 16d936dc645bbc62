"""Data-parallel training on the CPU: two gloo ranks started as ``--num_gpus 2`` starts them (fork).

Both ranks must end with identical weights (DDP all-reduces the gradients), different from the
initial ones, equal to rank 0's checkpoint, and rank 1 must not have written a single file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training_fixtures import DATASET_NAME, make_trainer, write_text_encoder, write_training_dataset
from unisyn_v2.training.distributed import DistributedContext, shard_range
from unisyn_v2.training.gfm_trainer import GFMTrainer
from unisyn_v2.training.settings import TrainerSettings

SETTINGS = {"num_epochs": 2, "iterations_per_epoch": 2, "validation_iterations": 1, "num_workers": 0,
            "validation_figures": 0, "max_validation_cases": 1}
# The launcher runs in a fresh interpreter, as unisyn_train does: forking pytest itself, after earlier
# tests ran multi-threaded torch ops, can leave a rank waiting forever on a lock copied mid-use
# (OpenMP does not survive a fork; launch() documents this).
LAUNCHER = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/..']; from test_distributed import _rank; "
            "from unisyn_v2.training.distributed import launch; "
            "launch(2, _rank, sys.argv[2], sys.argv[3], start_method='fork')")
WRITE_EVENTS = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.copyfile", "os.truncate")


def _writes_under(root: str, log: list[str]):  # noqa: ANN202 - an audit hook
    def hook(event: str, args: tuple) -> None:
        paths: list[object] = []
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in WRITE_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        for path in paths:
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(root):
                log.append(f"{event} {os.fspath(path)}")
    return hook


class _Died(Exception):
    pass


class DyingGFMTrainer(GFMTrainer):
    """The GFM trainer, killed (on every rank) at the start of epoch 2 when UNISYN_TEST_DIE is set."""

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 1 and os.environ.get("UNISYN_TEST_DIE"):
            raise _Died


def _train(results: Path, **extra: object):  # noqa: ANN202
    from unisyn_v2.training.run_training import run_training

    os.environ["UNISYN_RESULTS"] = str(results)
    return run_training("902", "test_distributed:DyingGFMTrainer", 0, device="cpu",
                        settings=TrainerSettings(**SETTINGS, **extra))


def _rank(root: str, out: str) -> None:
    """One rank: an uninterrupted run, then a run killed after epoch 1 and resumed with --c; report
    the weights and the files this rank wrote."""
    from unisyn_v2.training.distributed import distributed_session

    writes: list[str] = []
    sys.addaudithook(_writes_under(root, writes))
    torch.set_num_threads(1)
    report: dict[str, object] = {}
    with distributed_session(torch.device("cpu")):  # one process group for the three runs
        trainer = _train(Path(root) / "results")
        rank = trainer.distributed.rank
        assert trainer.distributed.world_size == 2 and trainer.batch_size == 2
        assert len(next(iter(trainer.train_loader))["case_ids"]) == 1  # the global batch of 2, one item per rank
        report["epoch"] = trainer.current_epoch
        torch.save(trainer.network.state_dict(), Path(out) / f"rank{rank}.pt")
        os.environ["UNISYN_TEST_DIE"] = "1"
        try:
            _train(Path(root) / "results_resumed")
        except _Died:
            report["died"] = True
        del os.environ["UNISYN_TEST_DIE"]
        resumed = _train(Path(root) / "results_resumed", continue_training=True)
        torch.save(resumed.network.state_dict(), Path(out) / f"resumed{rank}.pt")
    report["writes"] = list(writes)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))


def test_two_gloo_ranks_keep_identical_weights_resume_and_only_rank_0_writes(
        unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    _folder, plans = write_training_dataset(unisyn_dirs["preprocessed"])
    write_text_encoder(unisyn_dirs["results"], plans)
    write_text_encoder(tmp_path / "results_resumed", plans)
    initial = make_trainer(GFMTrainer, unisyn_dirs, **SETTINGS)
    initial.initialize()
    start = {k: v.clone() for k, v in initial.network.state_dict().items()}
    out = tmp_path / "ranks"
    out.mkdir()
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(Path(__file__).parent), str(tmp_path), str(out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]

    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    resumed = [torch.load(out / f"resumed{r}.pt", weights_only=True) for r in (0, 1)]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() == start.keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in start)
    assert any(not torch.equal(weights[0][k], start[k]) for k in start)
    assert all(torch.equal(resumed[r][k], weights[0][k]) for r in (0, 1) for k in start)  # --c is exact under DDP
    assert reports[0]["epoch"] == reports[1]["epoch"] == 2 and reports[0]["died"] and reports[1]["died"]
    assert reports[1]["writes"] == []
    assert reports[0]["writes"]  # rank 0 wrote the model folder, checkpoints, log, plot, validation

    fold = unisyn_dirs["results"] / DATASET_NAME / "DyingGFMTrainer__unisynPlans__2.5d" / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert all(torch.equal(final["network_weights"][k], weights[0][k]) for k in start)
    assert len(final["rng_states_by_rank"]) == 2
    for name in ("training_log.txt", "progress.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    log = (fold / "training_log.txt").read_text()
    assert log.count("epoch 2/2") == 1 and "data-parallel: 2 processes (gloo backend)" in log
    resumed_log = (tmp_path / "results_resumed" / DATASET_NAME / fold.parent.name / "fold_0" / "training_log.txt").read_text()
    assert "checkpoint_latest.pth (epoch 1)" in resumed_log


def test_batch_split_and_single_process_context() -> None:
    assert [shard_range(5, r, 2) for r in (0, 1)] == [(0, 2), (2, 5)]
    assert [shard_range(2, r, 2) for r in (0, 1)] == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="batch size \\(1\\) is smaller than the number of processes \\(2\\)"):
        shard_range(1, 0, 2)
    context = DistributedContext.current()
    assert not context.enabled and context.is_main and context.shard(3) == (0, 3)
    assert context.reduce_means({"a": [1.0, float("nan"), 3.0], "b": [float("nan")]}) == pytest.approx(
        {"a": 2.0, "b": float("nan")}, nan_ok=True)
    calls = context.wrap(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert calls(lambda network, x: network.out_features + x, 1) == 3
