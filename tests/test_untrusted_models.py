"""A model folder or model zip from elsewhere is data, never code (issue 18, part A).

The attack of issue 18: a zip whose trainer.json names ``Dataset009_Imp.gfmmodel.payload:GFMTrainer``
with a ``payload.py`` inside ran that file at ``unisyn_predict -m Dataset009_Imp/gfmmodel`` from the
results folder (and ``this:GFMTrainer`` imported any module). Now install refuses the zip, predicting
from such a folder refuses it, and a dotted path is imported only from the user's own command line.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from broken_inputs import MODEL_MANIFEST, PAYLOAD_PY, assert_clean_error, model_zip_entries, write_zip
from predictor_fixtures import head_phantom, write_case_image
from training_fixtures import make_trainer, write_training_dataset
from unisyn_v2 import model_sharing
from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.cli.model_sharing import install_main
from unisyn_v2.models.folder import load_trained_model
from unisyn_v2.models.registry import TRAINERS, UnknownTrainerError
from unisyn_v2.training.variants import OneHotGFMTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVIL_FOLDER = "Dataset009_Imp/gfmmodel"


class MyOneHotTrainer(OneHotGFMTrainer):
    """A user's own trainer: only its dotted path on the command line may import it."""


def _run(main, argv: list[object], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _inputs(folder: Path) -> Path:
    write_case_image(folder / "sub-00_T1w.nii.gz", head_phantom((12, 16, 16), 0.0, 500.0, 150.0))
    return folder


@pytest.mark.parametrize("trainer_class", [f"{EVIL_FOLDER.replace('/', '.')}.payload:GFMTrainer", "this:GFMTrainer"])
def test_the_issue_attack_runs_no_code(trainer_class: str, unisyn_dirs: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("UNISYN_TEST_MARKER", str(marker))
    entries = model_zip_entries(EVIL_FOLDER, trainer={"trainer_class": trainer_class},
                                extra={f"{EVIL_FOLDER}/payload.py": PAYLOAD_PY})
    archive = write_zip(tmp_path / "model.zip", entries)
    results = unisyn_dirs["results"]

    rc, _, err = _run(install_main, [archive], capsys)
    assert_clean_error(rc, err, ("model.zip", "refusing to install"))
    assert not any(results.iterdir())

    # the same folder copied by hand (no install) and predicted from the results folder, which is on sys.path
    # as it is for `python -m unisyn_v2.cli.predict` started there
    with zipfile.ZipFile(archive) as stream:
        stream.extractall(results, [n for n in stream.namelist() if n != MODEL_MANIFEST])
    monkeypatch.chdir(results)
    monkeypatch.syspath_prepend(str(results))
    already_imported = "this" in __import__("sys").modules
    rc, out, err = _run(predict_cli.main, ["-i", _inputs(tmp_path / "in"), "-o", tmp_path / "out", "-m", EVIL_FOLDER,
                                           "--target", "CT", "--device", "cpu", "--disable_progress_bar"], capsys)
    assert_clean_error(rc, err, ("trainer.json", "field trainer_class", f"{trainer_class!r} is not a registered trainer",
                                 "never imported"))
    assert not marker.exists()
    assert "Beautiful is better than ugly" not in out + err
    assert already_imported or "this" not in __import__("sys").modules
    assert not (tmp_path / "out").exists()


def test_a_users_own_trainer_loads_only_when_named_on_the_command_line(unisyn_dirs: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    write_training_dataset(unisyn_dirs["preprocessed"])
    trainer = make_trainer(MyOneHotTrainer, unisyn_dirs, num_epochs=1, iterations_per_epoch=1, validation_iterations=1,
                           final_validation=False)
    trainer.run()
    dotted = f"{__name__}:MyOneHotTrainer"
    try:
        with pytest.raises(UnknownTrainerError, match=r"trainer.json: field trainer_class: .*never imported.*-tr package"):
            load_trained_model(trainer.model_folder, 0)  # the folder alone imports nothing
        args = ["-i", _inputs(tmp_path / "in"), "-o", tmp_path / "out", "-m", trainer.model_folder, "--target", "CT",
                "--device", "cpu", "--disable_progress_bar"]
        rc, _, err = _run(predict_cli.main, args, capsys)
        assert_clean_error(rc, err, ("not a registered trainer",))
        rc, _, err = _run(predict_cli.main, args + ["-tr", dotted], capsys)  # the user's own command line
        assert rc == 0, err
        assert (tmp_path / "out" / "sub-00_CT.nii.gz").is_file()
    finally:
        TRAINERS.pop(dotted, None)


def test_install_accepts_a_trusted_own_trainer_and_stages_inside_the_results_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "not_yet" / "results"  # does not exist: install creates it and stages inside it
    monkeypatch.setenv("UNISYN_RESULTS", str(results))
    staged_in: list[object] = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(model_sharing.tempfile, "mkdtemp",
                        lambda *a, **k: staged_in.append(k.get("dir")) or real_mkdtemp(*a, **k))
    own = "my_lab.trainers:MyTrainer"
    folder = "Dataset001_Stand/MyTrainer__unisynPlans__3d"
    archive = write_zip(tmp_path / "model.zip", model_zip_entries(folder, trainer={"trainer_class": own}))
    rc, _, err = _run(install_main, [archive], capsys)
    assert_clean_error(rc, err, ("'my_lab.trainers:MyTrainer' is not a registered trainer", "--trust_trainer"))
    assert staged_in == [results] and not (tmp_path / "not_yet").exists()  # staged inside, then left nothing behind
    rc, _, err = _run(install_main, [archive, "--trust_trainer", own], capsys)
    assert rc == 0, err
    assert staged_in == [results, results] and (results / folder / "trainer.json").is_file()
    assert own not in TRAINERS.values()  # trusting a name at install imports and registers nothing


def test_install_counts_the_bytes_it_inflates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header that understates a member is caught while extracting, not only from the declared sizes."""
    archive = write_zip(tmp_path / "model.zip", model_zip_entries())
    info = zipfile.ZipFile(archive).getinfo("Dataset001_Stand/GFMTrainer__unisynPlans__3d/fold_0/checkpoint_final.pth")

    class Liar(zipfile.ZipFile):
        """Hands out 10,000 bytes for a member whose header declares 140 (what a lying archive would do)."""

        def open(self, name, *args, **kwargs):  # noqa: ANN001, ANN202
            if getattr(name, "filename", name) == info.filename:
                return io.BytesIO(bytes(10_000))
            return super().open(name, *args, **kwargs)

    monkeypatch.setattr(model_sharing.zipfile, "ZipFile", Liar)
    with pytest.raises(model_sharing.ModelArchiveError, match="checkpoint_final.pth' inflates beyond its declared size"):
        model_sharing.install_model(archive, tmp_path / "results")
    assert not [p for p in (tmp_path / "results").rglob("*") if p.is_file()]


def test_truncated_latest_checkpoint_offers_the_fallback_and_it_works(unisyn_dirs: dict[str, Path]) -> None:
    write_training_dataset(unisyn_dirs["preprocessed"])
    settings = {"num_epochs": 2, "iterations_per_epoch": 1, "validation_iterations": 1, "final_validation": False}
    trainer = make_trainer(OneHotGFMTrainer, unisyn_dirs, **settings)
    trainer.run()
    fold = trainer.fold_folder
    assert (fold / "checkpoint_best.pth").is_file()
    latest = (fold / "checkpoint_final.pth").read_bytes()  # as if killed while training: latest, best, no final
    (fold / "checkpoint_final.pth").unlink()
    (fold / "checkpoint_latest.pth").write_bytes(latest[: len(latest) // 3])
    resumed = make_trainer(OneHotGFMTrainer, unisyn_dirs, continue_training=True, **settings)
    with pytest.raises(RuntimeError, match=r"checkpoint_latest.pth: the file is damaged or incomplete .*fold_0 also holds "
                                           r"checkpoint_best.pth: predict with --chk checkpoint_best.pth, or resume "
                                           r"training with --c --resume_from checkpoint_best.pth"):
        resumed.run()
    fallback = make_trainer(OneHotGFMTrainer, unisyn_dirs, continue_training=True, resume_from="checkpoint_best.pth",
                            **settings)
    fallback.run()
    assert (fold / "checkpoint_final.pth").is_file()
    state = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert state["current_epoch"] == 2


def test_resume_from_needs_continue_and_a_file_name() -> None:
    from unisyn_v2.training.settings import TrainerSettings

    with pytest.raises(ValueError, match="--resume_from needs --c"):
        TrainerSettings(resume_from="checkpoint_best.pth")
    with pytest.raises(ValueError, match="checkpoint file name of the fold"):
        TrainerSettings(continue_training=True, resume_from="../elsewhere/checkpoint_best.pth")


def test_export_leaves_out_what_install_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray file in a model folder (notes, a script) is not exported, so an exported zip always installs."""
    source = tmp_path / "source"
    write_zip(tmp_path / "a.zip", model_zip_entries())
    with zipfile.ZipFile(tmp_path / "a.zip") as stream:
        stream.extractall(source, [n for n in stream.namelist() if n != MODEL_MANIFEST])
    model = source / "Dataset001_Stand" / "GFMTrainer__unisynPlans__3d"
    (model / "notes.py").write_text("print('hello')\n")
    (model / "fold_0" / ".DS_Store").write_bytes(b"\0")
    archive = model_sharing.export_model(model, tmp_path / "exported.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert not any(n.endswith(("notes.py", ".DS_Store")) for n in names) and MODEL_MANIFEST in names
    monkeypatch.setenv("UNISYN_RESULTS", str(tmp_path / "results"))
    rc, _, err = _run(install_main, [archive], capsys)
    assert rc == 0, err
    shutil.rmtree(tmp_path / "results")
