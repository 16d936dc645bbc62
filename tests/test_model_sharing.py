"""``unisyn_export_model`` / ``unisyn_install_model``: a model moved through a zip into another results
folder predicts bit-identically (with -npp 2 workers here, the serial original); install refuses
zip-slip entries and an existing model without --overwrite."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from raw_fixtures import write_blob_dataset
from predictor_fixtures import head_phantom, write_case_image
from training_fixtures import write_text_encoder
from unisyn_v2.cli import model_sharing as sharing_cli
from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.dataset.image_io import read_image

MODEL = Path("Dataset001_Blob") / "GFMTrainer__unisynPlans__2.5d"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(dirs: dict[str, Path]) -> None:
    from unisyn_v2.experiment_planning.api import plan_and_preprocess
    from unisyn_v2.training.run_training import run_training
    from unisyn_v2.training.settings import TrainerSettings

    write_blob_dataset(dirs["raw"] / "Dataset001_Blob", num_cases=3)
    plans = plan_and_preprocess(1, planner="cpu", num_processes=1, progress=False)
    write_text_encoder(dirs["results"], plans)  # stage 1's artifact
    run_training(1, "gfm", 0, "2.5d", device="cpu", settings=TrainerSettings(
        num_epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0, final_validation=False))


def _predict(inputs: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    assert predict_cli.main(["-i", str(inputs), "-o", str(out), "-d", "1", "-tr", "gfm", "-c", "2.5d", "--target", "CT",
                             "--disable_progress_bar", "--device", "cpu", *extra]) == 0
    return {p.name: read_image(p)[0] for p in sorted(out.glob("*.nii.gz"))}


def test_export_install_predicts_identically(unisyn_dirs: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _train(unisyn_dirs)
    inputs = tmp_path / "in"
    for index in range(3):
        write_case_image(inputs / f"sub-{index}_T1w.nii.gz", head_phantom((20, 32, 32), 0.0, 500.0, 150.0, seed=index))
    original = _predict(inputs, tmp_path / "original")
    archive = tmp_path / "model.zip"
    assert sharing_cli.export_main(["-d", "1", "-tr", "gfm", "-o", str(archive)]) == 0
    names = set(zipfile.ZipFile(archive).namelist())
    for name in ("plans.json", "trainer.json", "dataset.json", "dataset_fingerprint.json", "text_encoder/config.json",
                 "text_encoder/tokenizer.json", "text_encoder/weights.pt", "fold_0/checkpoint_final.pth"):
        assert str(MODEL / name) in names, name
    assert not any(n.endswith("checkpoint_best.pth") for n in names)

    shutil.move(unisyn_dirs["results"], tmp_path / "results_moved_away")  # nothing may point back to it
    elsewhere = tmp_path / "other_machine" / "results"
    monkeypatch.setenv("UNISYN_RESULTS", str(elsewhere))
    assert sharing_cli.install_main([str(archive)]) == 0
    assert (elsewhere / MODEL / "text_encoder" / "weights.pt").is_file()
    installed = _predict(inputs, tmp_path / "installed", "-npp", "2")  # and in 2 worker processes
    assert original.keys() == installed.keys() and len(original) == 3
    for name, array in original.items():
        assert np.array_equal(array, installed[name]), name
    sidecar = json.loads((tmp_path / "installed" / "sub-0_CT.json").read_text())
    assert sidecar["model"]["folder"] == str((elsewhere / MODEL).resolve())

    capsys.readouterr()
    assert sharing_cli.install_main([str(archive)]) == 2  # an installed model is never replaced silently
    assert "--overwrite" in capsys.readouterr().err
    (elsewhere / MODEL / "plans.json").write_text("{}")
    assert sharing_cli.install_main([str(archive), "--overwrite"]) == 0
    assert json.loads((elsewhere / MODEL / "plans.json").read_text())["plans_name"] == "unisynPlans"
    assert not [p for p in elsewhere.rglob("*") if p.name.startswith(".tmp")]


@pytest.mark.parametrize("evil", ["../evil.txt", "Dataset001_Blob/M__p__c/../../../evil.txt", "/tmp/unisyn_evil.txt"])
def test_install_refuses_zip_slip(unisyn_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                  evil: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as stream:
        stream.writestr("Dataset001_Blob/M__p__c/plans.json", "{}")
        stream.writestr(evil, "overwritten")
    assert sharing_cli.install_main([str(archive)]) == 2
    assert "would escape" in capsys.readouterr().err
    assert not (unisyn_dirs["results"].parent / "evil.txt").exists() and not Path("/tmp/unisyn_evil.txt").exists()
    assert not any(unisyn_dirs["results"].iterdir())
