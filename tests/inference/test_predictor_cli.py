"""``unisyn_predict`` from the command line: model lookup, existing outputs, atomic writes, and end to end
on a tiny trained GFM (plan -> train 1 epoch x 2 iterations -> predict FDG-PET -> evaluate)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.cli import evaluate as evaluate_cli
from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.dataset.image_io import read_geometry, read_image
from unisyn_v2.inference import predictor as predictor_module

from predictor_fixtures import head_phantom, make_plans, stand_in_loader, write_case_image, write_model_folder


@pytest.fixture
def stand_in_model(unisyn_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in model folder in results/Dataset001_Stand served by the stand-in loader."""
    monkeypatch.setattr(predictor_module, "load_fold", stand_in_loader)
    plans = make_plans()
    return write_model_folder(unisyn_dirs["results"] / "Dataset001_Stand", plans, network="constant:0.5", folds=("0", "1"))


def _inputs(folder: Path) -> Path:
    for index in range(2):
        write_case_image(folder / f"sub-0{index}_T1w.nii.gz", head_phantom((14, 18, 18), 0.0, 500.0, 150.0, seed=index))
    return folder


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


def test_cli_existing_outputs_continue_and_overwrite(stand_in_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    base = ["-i", str(inputs), "-o", str(out), "-d", "1", "-tr", "gfm", "-c", "3d", "--target", "FDG-PET",
            "--disable_progress_bar", "--device", "cpu"]
    assert predict_cli.main(base) == 0
    first, second = out / "sub-00_FDG-PET.nii.gz", out / "sub-01_FDG-PET.nii.gz"
    sidecar = json.loads((out / "sub-00_FDG-PET.json").read_text())
    assert sidecar["model"]["folds"] == ["0", "1"] and sidecar["model"]["trainer"] == "gfm" and sidecar["unit"] == "SUV"
    assert "Age:" not in sidecar["target_prompt"] and "Modality: FDG-PET" in sidecar["target_prompt"]  # no age known: left out
    np.testing.assert_allclose(read_image(first)[0].max(), 4.0, rtol=1e-5)
    assert _no_temp_files(out)
    capsys.readouterr()

    assert predict_cli.main(base) == 2  # refuses to overwrite
    assert "--continue_prediction" in capsys.readouterr().err
    stamp = first.stat().st_mtime_ns
    (out / "sub-01_FDG-PET.json").unlink()  # an unfinished case
    os.utime(second, ns=(1, 1))
    assert predict_cli.main(base + ["--continue_prediction"]) == 0
    assert first.stat().st_mtime_ns == stamp and second.stat().st_mtime_ns > 1
    assert (out / "sub-01_FDG-PET.json").is_file()
    os.utime(first, ns=(1, 1))
    assert predict_cli.main(base + ["--overwrite"]) == 0
    assert first.stat().st_mtime_ns > 1 and _no_temp_files(out)


def test_cli_model_folder_and_target_errors(stand_in_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    base = ["-i", str(inputs / "sub-00_T1w.nii.gz"), "-o", str(out), "-m", str(stand_in_model), "-f", "1", "--disable_progress_bar"]
    assert predict_cli.main(base + ["--target", "PET-CT"]) == 2
    assert "unknown modality 'PET-CT'; known modalities" in capsys.readouterr().err
    assert predict_cli.main(base + ["--target", "AV45-PET"]) == 2
    assert "no normalisation" in capsys.readouterr().err
    assert predict_cli.main(base + ["--target", "CT"]) == 0
    assert json.loads((out / "sub-00_CT.json").read_text())["model"]["folds"] == ["1"]
    assert predict_cli.main(["-i", str(inputs), "-o", str(out), "-d", "1", "-tr", "unet", "-c", "3d", "--target", "CT"]) == 2
    assert "no model folder for trainer 'unet'" in capsys.readouterr().err


def _train_tiny_gfm(dirs: dict[str, Path]) -> None:
    from raw_fixtures import write_blob_dataset
    from training_fixtures import write_text_encoder

    from unisyn_v2.experiment_planning.api import plan_and_preprocess
    from unisyn_v2.training.run_training import run_training
    from unisyn_v2.training.settings import TrainerSettings

    write_blob_dataset(dirs["raw"] / "Dataset001_Blob", num_cases=3)
    plans = plan_and_preprocess(1, planner="cpu", num_processes=1, progress=False)
    write_text_encoder(dirs["results"], plans)  # stands in for stage 1 (NeuroCLIP)
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0,
                               final_validation=False)
    run_training(1, "gfm", 0, "2.5d", device="cpu", settings=settings)


def test_end_to_end_train_predict_evaluate(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    _train_tiny_gfm(unisyn_dirs)
    raw = unisyn_dirs["raw"] / "Dataset001_Blob" / "case_002"
    inputs, ref, masks, out = (tmp_path / name for name in ("in", "ref", "mask", "out"))
    for folder in (inputs, ref, masks):
        folder.mkdir()
    shutil.copy(raw / "case_002_T1w.nii.gz", inputs)
    shutil.copy(raw / "case_002_CT.nii.gz", inputs)
    shutil.copy(raw / "case_002_FDG-PET.nii.gz", ref)
    shutil.copy(raw / "case_002_brainmask.nii.gz", masks / "case_002_FDG-PET.nii.gz")
    argv = ["-i", str(inputs), "-o", str(out), "-d", "1", "-tr", "gfm", "-c", "2.5d", "-f", "0", "--target", "FDG-PET",
            "--disable_progress_bar"]
    assert predict_cli.main(argv) == 0
    prediction = out / "case_002_FDG-PET.nii.gz"
    assert read_geometry(prediction).matches(read_geometry(raw / "case_002_FDG-PET.nii.gz"))
    array, _ = read_image(prediction)
    assert np.isfinite(array).all() and array.dtype == np.float32
    sidecar = json.loads((out / "case_002_FDG-PET.json").read_text())
    assert sidecar["unit"] == "SUV" and sidecar["model"]["conditioning"] == "text"
    assert sidecar["source_images"][0]["modality"] == "T1w"  # T1w preferred over CT for a PET target
    assert "Tracer: FDG" in sidecar["target_prompt"] and "(250.0, 45.0, SUV)" in sidecar["target_prompt"]
    assert evaluate_cli.main(["-ref", str(ref), "-pred", str(out), "--mask", str(masks), "--figure"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "papers" and summary["n_cases"] == 1
    assert set(summary["per_case"][0]) >= {"psnr", "ssim", "mae"}
    assert (out / "summary.csv").is_file() and (out / "figures" / "case_002_FDG-PET.png").is_file()
