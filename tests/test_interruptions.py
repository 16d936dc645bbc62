"""kill -9 at a random (seeded) point, then rerun: the result must equal an uninterrupted run.

Preprocessing, training and prediction run as console-script subprocesses on tiny data and are killed
with SIGKILL once they have written something (plus a random delay); the rerun (training with --c)
must give the same arrays, the same weights after the same iterations, the same predictions, and
leave no temp file behind: a temp file of a dead writer is removed by the rerun, one of a live
writer is not. Every process uses one thread, so the arithmetic is the same in each of them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from raw_fixtures import write_blob_dataset
from predictor_fixtures import head_phantom, write_case_image
from training_fixtures import DATASET_NAME, write_text_encoder, write_training_dataset
from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.cli import train as train_cli
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.io_utils import read_json, temp_prefix
from unisyn_v2.training.checkpointing import load_checkpoint

BIN = Path(sys.executable).parent
SEED = 20240607


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _start(script: str, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "ab") as stream:
        return subprocess.Popen([str(BIN / script), *args], env=env, stdout=stream, stderr=subprocess.STDOUT)


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float, log: Path) -> None:
    """SIGKILL ``process`` once ``ready()`` holds plus ``delay`` seconds."""
    deadline = time.monotonic() + 180
    while not ready():
        assert process.poll() is None, f"finished before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"never got ready:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"exited by itself ({process.returncode}):\n{log.read_text()[-3000:]}"


def _plant_temp_files(folder: Path, dead_pid: int) -> tuple[Path, Path]:
    """A temp file of the killed writer (must go) and one of a live writer, this process (must stay)."""
    dead = folder / temp_prefix("planted").replace(f"-{os.getpid()}_", f"-{dead_pid}_")
    live = folder / temp_prefix("planted_live")
    dead.write_bytes(b"half a file")
    live.write_bytes(b"being written")
    return dead, live


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


def test_preprocessing_killed_then_rerun_equals_uninterrupted(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    from unisyn_v2.experiment_planning.api import plan_and_preprocess, preprocess
    from unisyn_v2.preprocessing.run import preprocess_dataset

    raw = write_blob_dataset(unisyn_dirs["raw"] / "Dataset001_Blob", num_cases=10, shape=(40, 48, 44))
    plans = plan_and_preprocess(1, planner="cpu", num_processes=1, progress=False, run_preprocessing=False)
    reference = preprocess_dataset(raw, plans, tmp_path / "reference", num_processes=1, progress=False)
    out = unisyn_dirs["preprocessed"] / "Dataset001_Blob" / reference.name
    log = tmp_path / "preprocess.log"
    process = _start("unisyn_preprocess", ["-d", "1", "-np", "1", "--no_pbar"], log)  # workers: test_parallel.py
    _kill_when(process, lambda: any(out.glob("case_*.json")), random.Random(SEED).uniform(0, 0.2), log)
    assert len(list(out.glob("case_*.json"))) < 10
    dead, live = _plant_temp_files(out, process.pid)

    preprocess(1, num_processes=1, progress=False)
    assert not dead.exists() and live.exists()
    live.unlink()
    assert not _temp_files(unisyn_dirs["preprocessed"])
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in out.iterdir()) and len(names) == 40  # .json, .npy, _mask.npy, _head.npy
    for name in names:
        if name.endswith(".npy"):
            expected, got = np.load(reference / name), np.load(out / name)
            assert expected.dtype == got.dtype and np.array_equal(expected, got), name
        else:
            assert read_json(reference / name) == read_json(out / name), name


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["network_weights"]


def test_training_killed_twice_then_resumed_equals_uninterrupted(unisyn_dirs: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _folder, plans = write_training_dataset(unisyn_dirs["preprocessed"])
    write_text_encoder(unisyn_dirs["results"], plans)
    reference_root = tmp_path / "reference_results"
    write_text_encoder(reference_root, plans)
    epochs = 30  # kills land on epochs, not after a delay: a tiny epoch on an idle machine takes milliseconds
    args = ["902", "gfm", "0", "--epochs", str(epochs), "--iterations_per_epoch", "2", "--validation_iterations", "1",
            "--num_workers", "0", "--no_final_validation", "--device", "cpu"]
    monkeypatch.setenv("UNISYN_RESULTS", str(reference_root))
    assert train_cli.main(args) == 0
    monkeypatch.setenv("UNISYN_RESULTS", str(unisyn_dirs["results"]))

    fold = unisyn_dirs["results"] / DATASET_NAME / "GFMTrainer__unisynPlans__2.5d" / "fold_0"
    latest = fold / "checkpoint_latest.pth"
    rng = random.Random(SEED)
    first_kill = rng.randint(2, 6)
    second_kill = first_kill + rng.randint(3, 8)

    def reached(log: Path, epoch: int) -> Callable[[], bool]:
        return lambda: latest.is_file() and f"epoch {epoch}/{epochs}" in log.read_text(errors="replace")

    first_log, second_log = tmp_path / "train_1.log", tmp_path / "train_2.log"
    process = _start("unisyn_train", args, first_log)
    _kill_when(process, reached(first_log, first_kill), 0.0, first_log)
    process = _start("unisyn_train", args + ["--c"], second_log)
    _kill_when(process, reached(second_log, second_kill), 0.0, second_log)
    assert not (fold / "checkpoint_final.pth").exists()
    dead, live = _plant_temp_files(fold, process.pid)

    assert train_cli.main(args + ["--c"]) == 0
    assert not dead.exists() and live.exists()
    live.unlink()
    assert not _temp_files(unisyn_dirs["results"])
    expected = load_checkpoint(reference_root / DATASET_NAME / fold.parent.name / "fold_0" / "checkpoint_final.pth")
    got = load_checkpoint(fold / "checkpoint_final.pth")
    assert got["current_epoch"] == expected["current_epoch"] == epochs
    assert expected["network_weights"].keys() == got["network_weights"].keys()
    for key, value in expected["network_weights"].items():
        assert torch.equal(value, got["network_weights"][key]), key
    assert got["progress"]["values"]["train_loss"] == expected["progress"]["values"]["train_loss"]
    assert f"epoch {epochs}/{epochs}" in (fold / "training_log.txt").read_text()


def test_prediction_killed_then_continued_equals_uninterrupted(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    from unisyn_v2.experiment_planning.api import plan_and_preprocess
    from unisyn_v2.training.run_training import run_training
    from unisyn_v2.training.settings import TrainerSettings

    write_blob_dataset(unisyn_dirs["raw"] / "Dataset001_Blob", num_cases=3)
    plans = plan_and_preprocess(1, planner="cpu", num_processes=1, progress=False)
    write_text_encoder(unisyn_dirs["results"], plans)
    run_training(1, "gfm", 0, "2.5d", device="cpu", settings=TrainerSettings(
        num_epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0, final_validation=False))
    inputs = tmp_path / "in"
    cases = 16  # a case takes ~20 ms: enough of them that the kill lands mid-run, not after the last one
    for index in range(cases):
        write_case_image(inputs / f"sub-{index:02d}_T1w.nii.gz", head_phantom((24, 40, 40), 0.0, 500.0, 150.0, seed=index))
    base = ["-i", str(inputs), "-d", "1", "-tr", "gfm", "-c", "2.5d", "-f", "0", "--target", "FDG-PET",
            "--disable_progress_bar", "--device", "cpu"]
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert predict_cli.main(base + ["-o", str(reference)]) == 0

    log = tmp_path / "predict.log"
    process = _start("unisyn_predict", base + ["-o", str(out)], log)
    _kill_when(process, lambda: any(out.glob("*.json")), random.Random(SEED).uniform(0, 0.03), log)
    assert len(list(out.glob("*.json"))) < cases
    dead, live = _plant_temp_files(out, process.pid)

    assert predict_cli.main(base + ["-o", str(out), "--continue_prediction"]) == 0
    assert not dead.exists() and live.exists()
    live.unlink()
    assert not _temp_files(out)
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in out.iterdir()) and len(names) == 2 * cases
    for name in names:
        if name.endswith(".nii.gz"):
            (expected, geometry), (got, got_geometry) = read_image(reference / name), read_image(out / name)
            assert np.array_equal(expected, got) and geometry == got_geometry, name
        else:
            expected_sidecar, got_sidecar = read_json(reference / name), read_json(out / name)
            for volatile in ("created",):
                expected_sidecar.pop(volatile), got_sidecar.pop(volatile)
            assert expected_sidecar == got_sidecar, name
