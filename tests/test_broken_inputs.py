"""Bad input gets a clear error and loses nothing: a corpus of broken inputs through the real entry points.

Every case must exit 2 with one ``error:`` line on stderr that names the file / case / field and says
what to do, show no traceback (without --verbose), leave the raw data and any earlier valid outputs
byte-identical and leave no temp or half-written files. Corpus generators live in broken_inputs.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broken_inputs import (
    ID_CASES, RAW_CASES, T1, JsonFullDisk, NumpyFullDisk, SitkFullDisk, SitkShortWrite, assert_clean_error, damage_member,
    files_under, temp_files, tree_digest, write_zip,
)
from broken_inputs import (
    MODEL_DIR, PAYLOAD_PY, PicklePayload, flag_encrypted, model_zip_entries, understate_size, write_tweaked_zip,
)
from raw_fixtures import write_blob_dataset
from predictor_fixtures import head_phantom, make_plans, stand_in_loader, write_case_image, write_model_folder
from training_fixtures import DATASET_NAME, make_trainer, tiny_plans, write_text_encoder, write_training_dataset
from unisyn_v2 import io_utils
from unisyn_v2.cli import evaluate as evaluate_cli
from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.cli import train as train_cli
from unisyn_v2.cli.model_sharing import install_main
from unisyn_v2.cli.plan_and_preprocess import plan_and_preprocess_main, verify_main
from unisyn_v2.dataset import image_io
from unisyn_v2.inference import predictor as predictor_module
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.preprocessing import case_store

GFM, CROSS = "GFMTrainer__unisynPlans__2.5d", "CrossAttnBaselineTrainer__unisynPlans__2.5d"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(main, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------ raw datasets
@pytest.fixture
def blob(unisyn_dirs: dict[str, Path]) -> Path:
    return write_blob_dataset(unisyn_dirs["raw"] / "Dataset001_Blob", num_cases=2, shape=(16, 16, 16))


def _check_raw_failure(dataset: str, expected: tuple[str, ...], dirs: dict[str, Path], capsys) -> None:
    before = tree_digest(dirs["raw"])
    for main, extra in ((verify_main, []), (plan_and_preprocess_main, ["-np", "1", "--no_pbar", "-pl", "cpu"])):
        rc, err = _run(main, ["-d", dataset, *extra], capsys)
        assert_clean_error(rc, err, expected)
        assert tree_digest(dirs["raw"]) == before  # raw data untouched
        assert files_under(dirs["preprocessed"]) == [] and temp_files(dirs["raw"]) == []


@pytest.mark.parametrize("name", list(RAW_CASES))
def test_broken_raw_dataset(name: str, blob: Path, unisyn_dirs: dict[str, Path], capsys) -> None:
    breaker, expected = RAW_CASES[name]
    breaker(blob)
    _check_raw_failure("1", expected, unisyn_dirs, capsys)


@pytest.mark.parametrize("name", list(ID_CASES))
def test_broken_dataset_id(name: str, blob: Path, unisyn_dirs: dict[str, Path], capsys) -> None:
    dataset, breaker, expected = ID_CASES[name]
    breaker(blob)
    _check_raw_failure(dataset, expected, unisyn_dirs, capsys)


def test_scl_slope_and_inter_are_applied(blob: Path, capsys) -> None:
    """Not broken: int16 data with scl_slope 2 / scl_inter -5 is read scaled, like nibabel reads it."""
    import nibabel

    from broken_inputs import rewrite_nifti

    raw = np.round(np.asarray(nibabel.load(str(blob / T1)).dataobj)).astype(np.int16)
    rewrite_nifti(blob / T1, raw, np.int16, slope=2.0, inter=-5.0)
    array, _ = image_io.read_image(blob / T1)
    np.testing.assert_array_equal(array, raw.transpose(2, 1, 0) * 2.0 - 5.0)
    assert verify_main(["-d", "1"]) == 0


def test_disk_full_while_planning(blob: Path, unisyn_dirs: dict[str, Path], monkeypatch, capsys) -> None:
    monkeypatch.setattr(io_utils, "json", JsonFullDisk(ok_calls=0))  # the fingerprint is the first JSON written
    before = tree_digest(unisyn_dirs["raw"])
    rc, err = _run(plan_and_preprocess_main, ["-d", "1", "-np", "1", "--no_pbar", "-pl", "cpu"], capsys)
    assert_clean_error(rc, err, ("cannot write", "dataset_fingerprint.json", "No space left", "free some disk space"))
    assert files_under(unisyn_dirs["preprocessed"]) == [] and temp_files(unisyn_dirs["preprocessed"]) == []
    assert tree_digest(unisyn_dirs["raw"]) == before


# ------------------------------------------------------------------- tokenizer
def test_tokenizer_refuses_a_prompt_over_224_tokens() -> None:
    tokenizer = MetadataTokenizer.default()
    prompt = "Age: None; Gender: None; Scanner: 3.0 " + "Vendor" * 60 + "; Modality: T1w"
    with pytest.raises(ValueError, match=r"prompt needs \d+ tokens .* context of 224; shorten"):
        tokenizer.encode(prompt)


# ------------------------------------------------- prediction with a stand-in model
@pytest.fixture
def stand_in(unisyn_dirs: dict[str, Path], tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """A stand-in one-hot model folder (results/Dataset001_Stand) and an input folder with two T1w cases."""
    monkeypatch.setattr(predictor_module, "load_fold", stand_in_loader)
    model = write_model_folder(unisyn_dirs["results"] / "Dataset001_Stand", make_plans(), network="constant:0.5")
    inputs = tmp_path / "in"
    for index in range(2):
        write_case_image(inputs / f"sub-0{index}_T1w.nii.gz", head_phantom((12, 16, 16), 0.0, 500.0, 150.0, seed=index))
    return {"model": model, "in": inputs, "out": tmp_path / "out", "root": tmp_path}


def _predict_args(paths: dict[str, Path], target: str = "FDG-PET", inputs: object = None, output: object = None) -> list:
    return ["-i", inputs or paths["in"], "-o", output or paths["out"], "-m", paths["model"], "--target", target,
            "--disable_progress_bar", "--device", "cpu"]


def _nan_source(p: dict[str, Path]) -> None:
    array = head_phantom((12, 16, 16), 0.0, 500.0, 150.0)
    array[5, 5, 5] = np.nan
    write_case_image(p["in"] / "sub-00_T1w.nii.gz", array)


def _truncate_source(p: dict[str, Path]) -> None:
    data = (p["in"] / "sub-00_T1w.nii.gz").read_bytes()
    (p["in"] / "sub-00_T1w.nii.gz").write_bytes(data[: len(data) // 2])


def _four_d_source(p: dict[str, Path]) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([16, 16, 12, 2], sitk.sitkFloat32), str(p["in"] / "sub-00_T1w.nii.gz"))


def _broken_input_dataset(p: dict[str, Path]) -> None:
    for image in p["in"].iterdir():
        image.unlink()
    write_blob_dataset(p["in"], num_cases=1, shape=(12, 16, 16))
    (p["in"] / "dataset.json").write_text((p["in"] / "dataset.json").read_text().replace('"cases"', '"colour": 1, "cases"'))


PREDICT_CASES = {  # name: (break the inputs, --target, expected)
    "target_never_seen_by_the_model": (None, "T2w", ("target T2w", "no code for it", "it knows T1w, CT, FDG-PET")),
    "target_unknown_modality": (None, "PET-CT", ("unknown modality 'PET-CT'", "known modalities")),
    "target_json_wrong_type": (lambda p: (p["root"] / "t.json").write_text('{"modality": "CT", "metadata": {"kvp": "high"}}'),
                               "{root}/t.json", ("t.json: metadata.kvp", "must be a number")),
    "output_folder_is_a_file": (lambda p: p["out"].write_text("not a folder"), "CT", ("output folder", "is a file, not a folder")),
    "source_nan_voxels": (_nan_source, "CT", ("case sub-00", "sub-00_T1w.nii.gz", "NaN or infinite", "replace")),
    "source_truncated": (_truncate_source, "CT", ("sub-00_T1w.nii.gz", "truncated")),
    "source_corrupt": (lambda p: (p["in"] / "sub-00_T1w.nii.gz").write_bytes(b"\x00garbage" * 50), "CT",
                       ("sub-00_T1w.nii.gz", "cannot read the image")),
    "source_4d": (_four_d_source, "CT", ("sub-00_T1w.nii.gz", "got 4D")),
    "source_sidecar_echo_time_in_ms": (lambda p: (p["in"] / "sub-00_T1w.json").write_text('{"EchoTime": 2.3}'), "CT",
                                       ("sub-00_T1w.json.EchoTime", "milliseconds")),
    "source_without_modality": (lambda p: (p["in"] / "sub-00_T1w.nii.gz").rename(p["in"] / "patient.nii.gz"), "CT",
                                ("patient.nii.gz", "cannot tell its modality", "--source")),
    "input_dataset_json_unknown_key": (_broken_input_dataset, "CT", ("dataset.json", "field colour", "unknown top-level key")),
    "source_constant_image": (lambda p: write_case_image(p["in"] / "sub-00_T1w.nii.gz", np.full((12, 16, 16), 100.0, np.float32)),
                              "CT", ("case sub-00", "sub-00_T1w.nii.gz", "(T1w)", "percentiles", "coincide")),
}


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_broken_prediction_input(name: str, stand_in: dict[str, Path], capsys) -> None:
    breaker, target, expected = PREDICT_CASES[name]
    if breaker is not None:
        breaker(stand_in)
    before = tree_digest(stand_in["in"]), tree_digest(stand_in["model"])
    rc, err = _run(predict_cli.main, _predict_args(stand_in, target.format(root=stand_in["root"])), capsys)
    assert_clean_error(rc, err, expected)
    assert (tree_digest(stand_in["in"]), tree_digest(stand_in["model"])) == before
    out = stand_in["out"]
    assert out.is_file() or files_under(out) == []
    assert temp_files(stand_in["root"]) == []


@pytest.mark.parametrize("writer", ["image", "sidecar"])
def test_disk_full_during_prediction(writer: str, stand_in: dict[str, Path], monkeypatch, capsys) -> None:
    """The second case runs out of space: the first stays complete, the second leaves nothing."""
    if writer == "image":
        monkeypatch.setattr(image_io, "sitk", SitkFullDisk(ok_calls=1))
    else:
        monkeypatch.setattr(io_utils, "json", JsonFullDisk(ok_calls=1))
    rc, err = _run(predict_cli.main, _predict_args(stand_in), capsys)
    failed = "/sub-01_FDG-PET.nii.gz" if writer == "image" else "/sub-01_FDG-PET.json"
    assert_clean_error(rc, err, ("cannot write", failed, "No space left", "free some disk space"))
    assert sorted(p.name for p in files_under(stand_in["out"])) == ["sub-00_FDG-PET.json", "sub-00_FDG-PET.nii.gz"]
    assert temp_files(stand_in["root"]) == []
    assert np.isfinite(image_io.read_image(stand_in["out"] / "sub-00_FDG-PET.nii.gz")[0]).all()


def test_disk_full_while_overwriting_keeps_previous_outputs(stand_in: dict[str, Path], monkeypatch, capsys) -> None:
    assert _run(predict_cli.main, _predict_args(stand_in), capsys)[0] == 0
    previous = tree_digest(stand_in["out"])
    for patch in ((image_io, "sitk", SitkFullDisk(ok_calls=0)), (io_utils, "json", JsonFullDisk(ok_calls=0))):
        with monkeypatch.context() as context:
            context.setattr(*patch)
            rc, err = _run(predict_cli.main, _predict_args(stand_in) + ["--overwrite"], capsys)
        assert_clean_error(rc, err, ("cannot write", "sub-00_FDG-PET", "free some disk space"))
        assert tree_digest(stand_in["out"]) == previous and temp_files(stand_in["root"]) == []


# ------------------------------- issue 18 (part B): outputs known complete, inputs never written over
def test_silent_short_image_write_is_an_error(stand_in: dict[str, Path], monkeypatch, capsys) -> None:
    """SimpleITK cuts the second image short on a full disk *without raising*: an error naming the file, not rc 0."""
    monkeypatch.setattr(image_io, "sitk", SitkShortWrite(ok_calls=1))
    rc, err = _run(predict_cli.main, _predict_args(stand_in), capsys)
    assert_clean_error(rc, err, ("cannot write", "/sub-01_FDG-PET.nii.gz", "incomplete", "free some disk space"))
    assert "wrote " + str(stand_in["out"] / "sub-01") not in err
    assert sorted(p.name for p in files_under(stand_in["out"])) == ["sub-00_FDG-PET.json", "sub-00_FDG-PET.nii.gz"]
    assert temp_files(stand_in["root"]) == []


def test_continue_prediction_redoes_an_image_cut_short_behind_its_sidecar(stand_in: dict[str, Path], capsys) -> None:
    """The disk-full run of issue 18 left a cut image and a whole sidecar: --continue_prediction predicts it again."""
    assert _run(predict_cli.main, _predict_args(stand_in), capsys)[0] == 0
    image = stand_in["out"] / "sub-01_FDG-PET.nii.gz"
    whole = image_io.read_image(image)[0]
    image.write_bytes(image.read_bytes()[:-20])  # the gzip trailer and some data lost; nibabel/SimpleITK still read it
    untouched = (stand_in["out"] / "sub-00_FDG-PET.nii.gz").stat().st_mtime_ns
    rc, err = _run(predict_cli.main, _predict_args(stand_in) + ["--continue_prediction"], capsys)
    assert rc == 0, err
    assert "predicting case sub-01 again" in err and "skipping 1 finished case(s): sub-00" in err
    np.testing.assert_array_equal(image_io.read_image(image)[0], whole)
    assert (stand_in["out"] / "sub-00_FDG-PET.nii.gz").stat().st_mtime_ns == untouched


def test_disk_full_while_preprocessing_names_the_file(blob: Path, unisyn_dirs: dict[str, Path], monkeypatch, capsys) -> None:
    """numpy's errno-less '69600 requested and 11232 written' becomes a disk-full error naming the array file."""
    monkeypatch.setattr(case_store, "np", NumpyFullDisk())
    rc, err = _run(plan_and_preprocess_main, ["-d", "1", "-np", "1", "--no_pbar", "-pl", "cpu"], capsys)
    line = assert_clean_error(rc, err, ("cannot write", "unisynPlans_data/case_00", ".npy", "No space left", "disk full",
                                        "needs about", "free some disk space"))
    assert "requested and" not in line.split("(")[0]
    assert temp_files(unisyn_dirs["preprocessed"]) == []


def test_read_only_output_folder_fails_before_predicting(stand_in: dict[str, Path], monkeypatch, capsys) -> None:
    out = stand_in["out"]
    out.mkdir()
    if os.geteuid() == 0:  # root writes into a 0555 folder: refuse creating files there as a read-only mount would
        real = io_utils.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's name
            if dir is not None and Path(dir) == out:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(io_utils.tempfile, "mkstemp", mkstemp)
    else:
        out.chmod(0o555)
    predicted = []
    real_predict = predictor_module.UniSynPredictor.predict_image
    monkeypatch.setattr(predictor_module.UniSynPredictor, "predict_image",
                        lambda self, *a, **k: predicted.append(1) or real_predict(self, *a, **k))
    try:
        rc, err = _run(predict_cli.main, _predict_args(stand_in), capsys)
    finally:
        out.chmod(0o755)
    assert_clean_error(rc, err, ("output folder", str(out), "is not writable", "choose another folder"))
    assert predicted == [] and files_under(out) == []


def _link_output_folder(p: dict[str, Path]) -> Path:
    p["out"].symlink_to(p["in"], target_is_directory=True)
    return p["out"]


def _output_links_to_input(link: str) -> Callable[[dict[str, Path]], Path]:
    def prepare(p: dict[str, Path]) -> Path:
        p["out"].mkdir()
        getattr(os, link)(p["in"] / "sub-00_T1w.nii.gz", p["out"] / "sub-00_FDG-PET.nii.gz")
        return p["out"]
    return prepare


def _uncompressed_target_input(p: dict[str, Path]) -> Path:
    write_case_image(p["in"] / "sub-00_FDG-PET.nii", head_phantom((12, 16, 16), 0.0, 5.0, 2.0))
    return p["in"]


def _in_out(make: Callable[[Path], Any]) -> Callable[[dict[str, Path]], Path]:
    def prepare(p: dict[str, Path]) -> Path:
        p["out"].mkdir()
        make(p["out"])
        return p["out"]
    return prepare


INPUT = ("would overwrite the input image", "sub-00_T1w.nii.gz", "(case sub-00)", "choose another output folder")
OUTPUT_CASES = {  # name: (prepare the folders and return -o, --target, extra arguments, expected)
    "output_folder_is_the_input_folder_with_overwrite": (lambda p: p["in"], "T1w", ["--overwrite"], INPUT),
    "output_folder_is_the_input_folder": (lambda p: p["in"], "T1w", [], INPUT),
    "output_folder_is_a_symlink_to_the_input_folder": (_link_output_folder, "T1w", ["--overwrite"], INPUT),
    "output_image_is_a_symlink_to_an_input": (_output_links_to_input("symlink"), "FDG-PET", ["--overwrite"], INPUT),
    "output_image_is_a_hard_link_to_an_input": (_output_links_to_input("link"), "FDG-PET", ["--overwrite"], INPUT),
    "output_sidecar_is_an_inputs_bids_sidecar": (_uncompressed_target_input, "FDG-PET", ["--overwrite"],
                                                 ("output sidecar", "sub-00_FDG-PET.json", "sub-00_FDG-PET.nii", "BIDS sidecar")),
    "output_sidecar_path_is_a_folder": (_in_out(lambda out: (out / "sub-00_FDG-PET.json").mkdir()), "FDG-PET", ["--overwrite"],
                                        ("sub-00_FDG-PET.json is a folder, not a file", "choose another output folder")),
    "output_image_is_a_dangling_symlink": (_in_out(lambda out: (out / "sub-00_FDG-PET.nii.gz").symlink_to(out / "gone.nii.gz")),
                                           "FDG-PET", [], ("predictions already exist", "sub-00_FDG-PET.nii.gz", "--overwrite")),
    "output_image_is_a_symlink_to_a_folder": (_in_out(lambda out: (out / "sub-00_FDG-PET.nii.gz").symlink_to(out.parent / "in")),
                                              "FDG-PET", ["--continue_prediction"], ("sub-00_FDG-PET.nii.gz is a folder, not a file",)),
}


@pytest.mark.parametrize("name", list(OUTPUT_CASES))
def test_output_path_hostile(name: str, stand_in: dict[str, Path], capsys) -> None:
    """Outputs never replace an input (image, link to it, its BIDS sidecar) or a folder; nothing anywhere changes."""
    prepare, target, extra, expected = OUTPUT_CASES[name]
    out = prepare(stand_in)
    before = tree_digest(stand_in["root"])
    rc, err = _run(predict_cli.main, _predict_args(stand_in, target, output=out) + extra, capsys)
    line = assert_clean_error(rc, err, expected)
    if expected is INPUT:
        assert "prediction" not in line  # the user's input is not called a prediction
    assert tree_digest(stand_in["root"]) == before and temp_files(stand_in["root"]) == []


# ------------------------------------------- real (untrained) tiny models: train and predict
@pytest.fixture(scope="module")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """preprocessed/ + results/ with the toy dataset 902, a text encoder and untrained GFM and cross-attention
    model folders (checkpoint_final.pth written right after initialisation: no training)."""
    from unisyn_v2.training.gfm_trainer import GFMTrainer
    from unisyn_v2.training.variants import CrossAttnBaselineTrainer

    root = tmp_path_factory.mktemp("toy_models")
    dirs = {name: root / name for name in ("preprocessed", "results")}
    _, plans = write_training_dataset(dirs["preprocessed"], num_cases=3, shape=(8, 16, 16), plans=tiny_plans())
    write_text_encoder(dirs["results"], plans)
    for trainer_class in (GFMTrainer, CrossAttnBaselineTrainer):
        trainer = make_trainer(trainer_class, dirs)
        trainer.initialize()
        trainer.write_model_folder()
        trainer.save_checkpoint("checkpoint_final.pth")
        for loader in (trainer.train_loader, trainer.val_loader):
            getattr(loader, "close", lambda: None)()
    return root


@pytest.fixture
def toy(toy_models: Path, unisyn_dirs: dict[str, Path]) -> dict[str, Path]:
    for name in ("preprocessed", "results"):
        shutil.rmtree(unisyn_dirs[name])
        shutil.copytree(toy_models / name, unisyn_dirs[name])
    models = unisyn_dirs["results"] / DATASET_NAME
    return {**unisyn_dirs, "gfm": models / GFM / "fold_0" / "checkpoint_final.pth", "cross": models / CROSS}


def _replace_plans_field(path: Path, field: str, value: object) -> None:
    import json

    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))


def _edit_plans(change: Callable[[dict], Any], in_model: bool = False) -> Callable[[Any], None]:
    """A breaker applying ``change(plans dict)`` to the toy's preprocessed plans, or (``in_model``) to a model's plans.json."""
    def apply(where: Any) -> None:
        path = where / "plans.json" if in_model else where["preprocessed"] / DATASET_NAME / "unisynPlans.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return apply


def _latest_truncated_beside_best(folder: Path) -> None:
    """A run killed mid-training whose checkpoint_latest.pth was then damaged: latest (truncated) and best, no final."""
    final = folder / "fold_0" / "checkpoint_final.pth"
    shutil.copy(final, folder / "fold_0" / "checkpoint_best.pth")
    (folder / "fold_0" / "checkpoint_latest.pth").write_bytes(final.read_bytes()[:5000])
    final.unlink()


def _checkpoint_with_code(model: Path) -> None:
    import torch

    path = model / "fold_0" / "checkpoint_final.pth"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "extra": {"note": PicklePayload(model / "pwned")}}, path)  # a marker inside: the digest shows it


def _trainer_json(model: Path, **update: object) -> None:
    info = json.loads((model / "trainer.json").read_text())
    info.update(update)
    (model / "trainer.json").write_text(json.dumps(info))


TRAIN_ARGS = ["902", "crossattn", "0", "--epochs", "1", "--iterations_per_epoch", "1", "--num_workers", "0",
              "--no_final_validation", "--device", "cpu"]
TRAIN_CASES = {  # name: (break the folders, extra arguments, expected)
    "plans_from_a_newer_version": (lambda t: _replace_plans_field(t["preprocessed"] / DATASET_NAME / "unisynPlans.json",
                                                                  "format_version", 99), [],
                                   ("unisynPlans.json", "format_version 99", "upgrade unisyn_v2 or re-plan")),
    "plans_field_wrong_type": (lambda t: _replace_plans_field(t["preprocessed"] / DATASET_NAME / "unisynPlans.json",
                                                              "target_spacing_zyx", "2mm"), [],
                               ("unisynPlans.json.target_spacing_zyx", "must be a list")),
    "pretrained_weights_from_another_trainer": (None, ["--pretrained_weights", "{gfm}"],
                                                ("checkpoint_final.pth", "do not fit", "GFMTrainer", "missing key(s)")),
    "pretrained_weights_corrupt": (lambda t: t["gfm"].write_bytes(b"PK\x03\x04 not really a checkpoint"),
                                   ["--pretrained_weights", "{gfm}"], ("checkpoint_final.pth", "damaged or incomplete", "copy it again")),
    "continue_from_another_trainers_checkpoint": (lambda t: shutil.copy(t["gfm"], t["cross"] / "fold_0" / "checkpoint_final.pth"),
                                                  ["--c"], ("does not fit", "GFMTrainer", "same trainer")),
    # issue 18, part A: absurd plans are refused on load, naming the file and field; a damaged latest offers the fallback
    "plans_absurd_patch_size": (_edit_plans(lambda d: [c.update(patch_size=[10**6] * 3) for c in d["configurations"].values()]), [],
                                ("unisynPlans.json.configurations.", ".patch_size", "not a usable patch size")),
    "plans_batch_size_zero": (_edit_plans(lambda d: [c.update(batch_size=0) for c in d["configurations"].values()]), [],
                              ("unisynPlans.json.configurations.", ".batch_size", "out of range")),
    "plans_nan_spacing": (_edit_plans(lambda d: d.update(target_spacing_zyx=[float("nan"), 2.0, 2.0])), [],
                          ("unisynPlans.json.target_spacing_zyx[0]", "must be a finite number")),
    "plans_negative_voxel_spacing": (_edit_plans(lambda d: [c.update(spacing_zyx=[2.0, -2.0, 2.0]) for c in d["configurations"].values()]),
                                     [], ("unisynPlans.json.configurations.", ".spacing_zyx[1]", "must be positive")),
    "plans_data_identifier_escapes": (_edit_plans(lambda d: [c.update(data_identifier="../../elsewhere") for c in d["configurations"].values()]),
                                      [], ("unisynPlans.json.configurations.", ".data_identifier", "plain folder name")),
    "plans_patch_with_two_axes": (_edit_plans(lambda d: [c.update(patch_size=[16, 16]) for c in d["configurations"].values()]), [],
                                  (".patch_size", "must have 3 entries")),
    "truncated_latest_checkpoint_offers_fallback": (lambda t: _latest_truncated_beside_best(t["cross"]), ["--c"],
                                                    ("checkpoint_latest.pth", "damaged or incomplete", "also holds checkpoint_best.pth",
                                                     "--c --resume_from checkpoint_best.pth", "--chk checkpoint_best.pth")),
}


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_broken_training_input(name: str, toy: dict[str, Path], capsys) -> None:
    breaker, extra, expected = TRAIN_CASES[name]
    if breaker is not None:
        breaker(toy)
    before = tree_digest(toy["preprocessed"]), tree_digest(toy["results"] / DATASET_NAME / GFM)
    checkpoints = {p: p.read_bytes() for p in toy["cross"].rglob("*.pth")}
    rc, err = _run(train_cli.main, TRAIN_ARGS + [e.format(gfm=toy["gfm"]) for e in extra], capsys)
    assert_clean_error(rc, err, expected)
    assert (tree_digest(toy["preprocessed"]), tree_digest(toy["results"] / DATASET_NAME / GFM)) == before
    assert {p: p.read_bytes() for p in toy["cross"].rglob("*.pth")} == checkpoints  # no checkpoint written or changed
    assert temp_files(toy["results"]) == []


def _toy_input(folder: Path) -> Path:
    write_case_image(folder / "sub-00_T1w.nii.gz", head_phantom((10, 20, 20), 0.0, 500.0, 150.0), spacing_xyz=(2.0, 2.0, 2.0))
    return folder


MODEL_CASES = {  # name: (model folder, break it, --target, expected)
    "prompt_over_224_tokens": (GFM, None, "Age: 70.0; Gender: F; Scanner: 3.0 " + "Siemens" * 50 + "; Modality: CT; "
                               "Voxel size: None; Imaging parameter (kVp, kernel): (120.0, None)",
                               ("case sub-00", "target (CT) prompt needs", "context of 224", "shorten")),
    "model_plans_from_a_newer_version": (GFM, lambda m: _replace_plans_field(m / "plans.json", "format_version", 99), "CT",
                                         ("plans.json", "format_version 99", "upgrade unisyn_v2")),
    "gfm_checkpoint_in_a_crossattn_model": (CROSS, lambda m: shutil.copy(m.parent / GFM / "fold_0" / "checkpoint_final.pth",
                                                                       m / "fold_0" / "checkpoint_final.pth"), "CT",
                                            ("checkpoint_final.pth", "does not fit", "CrossAttnSynthesisNetwork", "GFMTrainer")),
    "truncated_checkpoint": (GFM, lambda m: (m / "fold_0" / "checkpoint_final.pth").write_bytes(
        (m / "fold_0" / "checkpoint_final.pth").read_bytes()[:5000]), "CT",
        ("cannot read checkpoint", "checkpoint_final.pth", "damaged or incomplete")),
    # issue 18, part A
    "truncated_checkpoint_with_best_beside": (GFM, lambda m: (shutil.copy(m / "fold_0" / "checkpoint_final.pth",
                                                                          m / "fold_0" / "checkpoint_best.pth"),
                                                              (m / "fold_0" / "checkpoint_final.pth").write_bytes(b"PK\x03\x04")), "CT",
                                              ("checkpoint_final.pth", "damaged or incomplete", "--chk checkpoint_best.pth")),
    "model_plans_absurd_patch_size": (GFM, _edit_plans(lambda d: d["configurations"]["2.5d"].update(patch_size=[10**6] * 3), in_model=True), "CT",
                                      ("plans.json.configurations.2.5d.patch_size", "not a usable patch size")),
    "checkpoint_with_pickled_code": (GFM, _checkpoint_with_code, "CT", ("refusing to load checkpoint", "checkpoint_final.pth",
                                                                       "could run code")),
    "trainer_json_names_a_dotted_path": (GFM, lambda m: _trainer_json(m, trainer_class="os:GFMTrainer"), "CT",
                                         ("trainer.json: field trainer_class", "'os:GFMTrainer' is not a registered trainer")),
    "trainer_json_conditioning_not_an_object": (GFM, lambda m: _trainer_json(m, conditioning="text"), "CT",
                                                ("trainer.json: field conditioning", "must be an object")),
    "target_prompt_times_in_seconds": (GFM, None, "Scanner: 3.0 Siemens; Modality: T1w; Imaging parameter TR(ms), TE(ms), "
                                       "TI(ms), and FA(degree): (2.3, 0.0023, 0.9, 8.0)",
                                       ("target T1w", "looks like seconds", "write 2300")),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_broken_model_folder_or_prompt(name: str, toy: dict[str, Path], tmp_path: Path, capsys) -> None:
    folder, breaker, target, expected = MODEL_CASES[name]
    model = toy["results"] / DATASET_NAME / folder
    if breaker is not None:
        breaker(model)
    inputs, out = _toy_input(tmp_path / "in"), tmp_path / "out"
    before = tree_digest(inputs), tree_digest(model)
    rc, err = _run(predict_cli.main, ["-i", inputs, "-o", out, "-m", model, "--target", target, "--device", "cpu",
                                      "--disable_progress_bar"], capsys)
    assert_clean_error(rc, err, expected)
    assert (tree_digest(inputs), tree_digest(model)) == before and not out.exists()


# -------------------------------------------------------------------- evaluate
def _evaluation_folders(root: Path) -> tuple[Path, Path]:
    ref, pred = root / "ref", root / "pred"
    write_case_image(ref / "sub-00.nii.gz", head_phantom((12, 16, 16), -1000.0, 35.0, 1200.0))
    write_case_image(pred / "sub-00_CT.nii.gz", head_phantom((12, 16, 16), -1000.0, 30.0, 1100.0, seed=1))
    return ref, pred


EVALUATE_CASES = {  # name: (break (root, pred), extra arguments, expected)
    "prediction_corrupt": (lambda root, pred: (pred / "sub-00_CT.nii.gz").write_bytes(b"\x00" * 200), [],
                           ("sub-00_CT.nii.gz", "cannot read the image")),
    "prediction_truncated": (lambda root, pred: (pred / "sub-00_CT.nii.gz").write_bytes((pred / "sub-00_CT.nii.gz").read_bytes()[:900]),
                             [], ("sub-00_CT.nii.gz", "truncated")),
    "prediction_other_shape": (lambda root, pred: write_case_image(pred / "sub-00_CT.nii.gz", np.zeros((10, 16, 16), np.float32)),
                               [], ("shape mismatch", "sub-00_CT.nii.gz")),
    "summary_folder_is_a_file": (lambda root, pred: (root / "blocker").write_text("x"), ["-o", "{root}/blocker/summary.json"],
                                 ("blocker is a file, not a folder", "choose another output folder")),
}


@pytest.mark.parametrize("name", list(EVALUATE_CASES))
def test_broken_evaluation_input(name: str, tmp_path: Path, capsys) -> None:
    breaker, extra, expected = EVALUATE_CASES[name]
    ref, pred = _evaluation_folders(tmp_path)
    breaker(tmp_path, pred)
    before = tree_digest(tmp_path)
    rc, err = _run(evaluate_cli.main, ["-ref", ref, "-pred", pred, *[e.format(root=tmp_path) for e in extra]], capsys)
    assert_clean_error(rc, err, expected)
    assert tree_digest(tmp_path) == before  # no summary, no temp file


# --------------------------------------------------------------- model install
MODEL_FILES = model_zip_entries()  # a valid model (plans, trainer.json, a checkpoint, the manifest)
INSTALL_CASES = {  # name: (make the archive, extra arguments, expected)
    "zip_random_bytes": (lambda path: path.write_bytes(b"\x13\x37" * 300), [], ("model.zip", "not a readable zip file")),
    "zip_slip_entry": (lambda path: write_zip(path, {"../../evil.txt": b"x", **MODEL_FILES}), [], ("'../../evil.txt'", "would escape")),
    "zip_not_a_model": (lambda path: write_zip(path, {"notes.txt": b"hello"}), [], ("'notes.txt'", "not a unisyn_v2 model zip")),
    "model_already_installed": (lambda path: write_zip(path, MODEL_FILES), [], ("GFMTrainer__unisynPlans__3d exists", "--overwrite")),
    "zip_damaged_member_over_existing_model": (lambda path: (write_zip(path, MODEL_FILES), damage_member(path, b"WEIGHTSWEIGHTS")),
                                               ["--overwrite"], ("model.zip", "damaged zip file", "export the model again")),
    # issue 18, part A: a model zip is data, never code, and is checked before anything is installed
    "zip_with_python_payload": (lambda path: write_zip(path, model_zip_entries(extra={f"{MODEL_DIR}/payload.py": PAYLOAD_PY})),
                                ["--overwrite"], ("model.zip", "payload.py", "not part of a model folder")),
    "trainer_class_dotted_path_into_the_zip": (lambda path: write_zip(path, model_zip_entries(
        trainer={"trainer_class": "Dataset001_Stand.GFMTrainer__unisynPlans__3d.payload:GFMTrainer"})), ["--overwrite"],
        ("trainer.json", "field trainer_class", "not a registered trainer", "never imported")),
    "trainer_class_any_module": (lambda path: write_zip(path, model_zip_entries(trainer={"trainer_class": "this:GFMTrainer"})),
                                 ["--overwrite"], ("trainer.json", "'this:GFMTrainer' is not a registered trainer")),
    "trainer_class_not_a_string": (lambda path: write_zip(path, model_zip_entries(trainer={"trainer_class": ["gfm"]})),
                                   ["--overwrite"], ("trainer.json", "field trainer_class", "must be a non-empty string")),
    "trainer_class_unknown_name": (lambda path: write_zip(path, model_zip_entries(trainer={"trainer_class": "EvilTrainer"})),
                                   ["--overwrite"], ("trainer.json", "unknown trainer 'EvilTrainer'")),
    "trainer_json_invalid": (lambda path: write_zip(path, {**MODEL_FILES, f"{MODEL_DIR}/trainer.json": b"{oops"}),
                             ["--overwrite"], ("trainer.json", "invalid JSON")),
    "trainer_json_absurd_patch_size": (lambda path: write_zip(path, model_zip_entries(trainer={"patch_size": [10**6] * 3})),
                                       ["--overwrite"], ("trainer.json", "field patch_size")),
    "plans_absurd_patch_size": (lambda path: write_zip(path, model_zip_entries(
        plans=lambda d: d["configurations"]["3d"].update(patch_size=[10**6] * 3))), ["--overwrite"],
        ("plans.json.configurations.3d.patch_size", "not a usable patch size")),
    "plans_nan_spacing": (lambda path: write_zip(path, model_zip_entries(plans=lambda d: d.update(target_spacing_zyx=[float("nan"), 2, 2]))),
                          ["--overwrite"], ("plans.json.target_spacing_zyx[0]", "finite")),
    "dataset_json_unknown_key": (lambda path: write_zip(path, model_zip_entries(extra={f"{MODEL_DIR}/dataset.json": json.dumps(
        {"colour": 1, "cases": [{"id": "a", "images": [{"file": "a.nii.gz", "modality": "T1w"}]}]}).encode()})),
        ["--overwrite"], ("dataset.json", "field colour", "unknown top-level key")),
    "text_conditioning_without_its_encoder": (lambda path: write_zip(path, model_zip_entries(
        trainer={"conditioning": {"kind": "text", "text_encoder": "text_encoder"}})), ["--overwrite"],
        ("conditions on text", "text_encoder/config.json")),
    "member_not_in_manifest": (lambda path: write_zip(path, model_zip_entries(unlisted={f"{MODEL_DIR}/fold_0/checkpoint_best.pth": b"x"})),
                               ["--overwrite"], ("checkpoint_best.pth", "not listed in unisyn_model_manifest.txt")),
    "manifest_lists_a_missing_member": (lambda path: write_zip(path, {k: v for k, v in model_zip_entries(
        extra={f"{MODEL_DIR}/dataset.json": b"{}"}).items() if not k.endswith("/dataset.json")}), ["--overwrite"],
        ("unisyn_model_manifest.txt lists", "dataset.json", "does not hold")),
    "no_manifest": (lambda path: write_zip(path, model_zip_entries(manifest=False)), ["--overwrite"],
                    ("no unisyn_model_manifest.txt", "unisyn_export_model")),
    "zip_bomb_member": (lambda path: write_tweaked_zip(path, model_zip_entries(
        extra={f"{MODEL_DIR}/fold_0/checkpoint_best.pth": bytes(8 * 2**20)}), deflate=True), ["--overwrite"],
        ("checkpoint_best.pth", "inflates", "over the limit of 100x", "zip bomb")),
    "zip_over_the_size_limit": (lambda path: write_zip(path, MODEL_FILES), ["--overwrite", "--max_size_gb", "1e-9"],
                                ("unpacks to", "over the limit", "--max_size_gb")),
    "manifest_damaged": (lambda path: (write_zip(path, MODEL_FILES), damage_member(path, b"plans.json\nDataset")), ["--overwrite"],
                         ("model.zip", "damaged zip file", "unisyn_model_manifest.txt")),
    "member_size_understated": (lambda path: (write_zip(path, MODEL_FILES), understate_size(path, f"{MODEL_DIR}/plans.json", 10)),
                                ["--overwrite"], ("model.zip", "damaged zip file")),
    "symlink_member": (lambda path: write_tweaked_zip(path, model_zip_entries(extra={f"{MODEL_DIR}/fold_0/progress.png": b"/etc/passwd"}),
                                                      lambda i: i.filename.endswith(".png") and setattr(i, "external_attr", 0o120777 << 16)),
                       ["--overwrite"], ("progress.png", "is a symbolic link")),
    "encrypted_member": (lambda path: (write_zip(path, MODEL_FILES), flag_encrypted(path, f"{MODEL_DIR}/fold_0/checkpoint_final.pth")),
                         ["--overwrite"], ("checkpoint_final.pth", "is encrypted")),
    "duplicate_member": (lambda path: write_tweaked_zip(path, MODEL_FILES, duplicate=f"{MODEL_DIR}/plans.json"), ["--overwrite"],
                         ("plans.json", "appears twice")),
    "backslash_member": (lambda path: write_zip(path, {**MODEL_FILES, "Dataset001_Stand\\GFMTrainer__unisynPlans__3d\\x.json": b"{}"}),
                         ["--overwrite"], ("not a plain relative path",)),
    "two_model_folders": (lambda path: write_zip(path, {**MODEL_FILES, **model_zip_entries("Dataset001_Stand/UNetBaselineTrainer__unisynPlans__3d")}),
                          ["--overwrite"], ("expected one model folder", "UNetBaselineTrainer__unisynPlans__3d")),
    "model_folder_not_named_like_one": (lambda path: write_zip(path, model_zip_entries("Dataset009_Imp/gfmmodel")), [],
                                        ("'Dataset009_Imp/gfmmodel'", "<Trainer>__<plans>__<configuration>")),
}


@pytest.mark.parametrize("name", list(INSTALL_CASES))
def test_broken_model_archive(name: str, unisyn_dirs: dict[str, Path], tmp_path: Path, capsys) -> None:
    make, extra, expected = INSTALL_CASES[name]
    existing = unisyn_dirs["results"] / "Dataset001_Stand" / "GFMTrainer__unisynPlans__3d"
    (existing / "fold_0").mkdir(parents=True)
    (existing / "fold_0" / "checkpoint_final.pth").write_bytes(b"the installed model")
    archive = tmp_path / "model.zip"
    make(archive)
    before = tree_digest(unisyn_dirs["results"])
    rc, err = _run(install_main, [archive, *extra], capsys)
    assert_clean_error(rc, err, expected)
    assert tree_digest(unisyn_dirs["results"]) == before and temp_files(unisyn_dirs["results"]) == []
    assert not (tmp_path.parent / "evil.txt").exists()
