"""Issue 18 (part B): written files follow the umask, long predictions log progress, and the messages a new
user meets (dataset ids, demo resume, --source NAME, prompts with missing fields) say what is true."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor_fixtures import head_phantom, make_plans, stand_in_loader, write_case_image, write_model_folder
from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.dataset.image_io import Geometry, write_image
from unisyn_v2.evaluation.evaluate import atomic_write_text
from unisyn_v2.inference import predictor as predictor_module
from unisyn_v2.models import sliding_window as sw
from unisyn_v2.io_utils import copy_file_atomic, write_json_atomic
from unisyn_v2.preprocessing.case_store import PreprocessedCase, save_preprocessed_case
from unisyn_v2.training.checkpointing import save_checkpoint_atomic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def stand_in(unisyn_dirs: dict[str, Path], tmp_path: Path, monkeypatch) -> dict[str, Path]:
    """A stand-in one-hot model folder and an input folder with one T1w case."""
    monkeypatch.setattr(predictor_module, "load_fold", stand_in_loader)
    model = write_model_folder(unisyn_dirs["results"] / "Dataset001_Stand", make_plans(), network="constant:0.5")
    write_case_image(tmp_path / "in" / "sub-00_T1w.nii.gz", head_phantom((12, 16, 16), 0.0, 500.0, 150.0))
    return {"model": model, "in": tmp_path / "in", "out": tmp_path / "out", "root": tmp_path}


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_written_files_follow_the_umask(umask: int, stand_in: dict[str, Path], tmp_path: Path) -> None:
    """mkstemp's 0600 used to stick to every atomically written file; now they get 0666 & ~umask like open()."""
    previous = os.umask(umask)
    try:
        assert predict_cli.main(["-i", str(stand_in["in"]), "-o", str(stand_in["out"]), "-m", str(stand_in["model"]),
                                 "--target", "CT", "--device", "cpu", "--disable_progress_bar"]) == 0
        other = tmp_path / "other"
        write_json_atomic(other / "a.json", {"a": 1})
        copy_file_atomic(other / "a.json", other / "copy.json")
        write_image(other / "image.nii.gz", np.zeros((2, 3, 4), np.float32),
                    Geometry((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
        save_preprocessed_case(other, PreprocessedCase("c", np.zeros((1, 2, 3, 4), np.float32), np.zeros((2, 3, 4), np.uint8),
                                                       {"channels": []}))
        save_checkpoint_atomic(other / "checkpoint.pth", {"network_weights": {"w": torch.zeros(2)}})
        atomic_write_text(other / "summary.csv", "a,b\n")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert _modes(stand_in["out"]) == {"sub-00_CT.json": expected, "sub-00_CT.nii.gz": expected}
    assert set(_modes(other).values()) == {expected} and len(_modes(other)) == 8


def test_sliding_window_logs_progress_without_a_bar(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    """With the bar off (--disable_progress_bar) a pass that takes minutes logs how far it got every ~20 s."""
    clock = iter(range(0, 100000, 7))  # each look at the clock: 7 s later
    monkeypatch.setattr(sw.time, "monotonic", lambda: float(next(clock)))
    image = torch.rand(1, 8, 16, 16)
    with caplog.at_level(logging.INFO, logger=sw.logger.name):
        sw.sliding_window_predict(image, lambda x: x, (4, 8, 8), step_size=0.5, tile_batch_size=1, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sliding window:")]
    assert lines, caplog.text
    assert "of 27 tiles" in lines[0] and "about" in lines[0] and "left" in lines[0]
    assert len(lines) < 27  # a low rate, not one line per tile
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=sw.logger.name):  # the bar shows it already: no duplicate log lines
        sw.sliding_window_predict(image, lambda x: x, (4, 8, 8), step_size=0.5, tile_batch_size=1, progress=True)
    assert not [r for r in caplog.records if r.getMessage().startswith("sliding window:")]


def test_source_name_is_not_called_missing_metadata(stand_in: dict[str, Path], capsys) -> None:
    """--source T1w asks for the typical T1w acquisition (README): no 'no --source' warning for it."""
    (stand_in["in"] / "sub-00_T1w.nii.gz").rename(stand_in["in"] / "patient.nii.gz")
    base = ["-i", str(stand_in["in"]), "-m", str(stand_in["model"]), "--target", "CT", "--device", "cpu",
            "--disable_progress_bar"]
    assert predict_cli.main(base + ["-o", str(stand_in["out"]), "--source", "T1w"]) == 0
    err = capsys.readouterr().err
    assert "no metadata" not in err and "WARNING: patient.nii.gz" not in err
    assert "patient.nii.gz: --source T1w: the typical T1w acquisition of the training set" in err
    (stand_in["in"] / "patient.nii.gz").rename(stand_in["in"] / "sub-00_T1w.nii.gz")  # nothing given: still a warning
    assert predict_cli.main(base + ["-o", str(stand_in["root"] / "out2")]) == 0
    assert "WARNING: sub-00_T1w.nii.gz: no metadata (no sidecar, no --source prompt/JSON)" in capsys.readouterr().err


def test_prompts_leave_out_what_is_not_known() -> None:
    """Issue 18 saw 'Age: None; Gender: None; Scanner: None Philips' in written prompts."""
    from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
    from unisyn_v2.metadata.prompts import ImageDescription, parse_prompt

    ct = ImageDescription("CT", ImageMetadata(manufacturer="Philips", kvp=120.0, voxel_size=(1.0, 1.0, 2.0)))
    assert ct.prompt() == "Scanner: Philips; Modality: CT; Voxel size: (1.0, 1.0, 2.0); Imaging parameter kVp and kernel: (120.0, None)"
    assert parse_prompt(ct.prompt()) == ct
    for description in (ct, ImageDescription("T1w", ImageMetadata(field_strength=3.0), SubjectMetadata(None, "F")),
                        ImageDescription("FDG-PET"), ImageDescription("CT", ImageMetadata(manufacturer="3D Systems"))):
        prompt = description.prompt()
        assert "Age: None" not in prompt and "Gender: None" not in prompt and "Scanner: None None" not in prompt
        assert parse_prompt(prompt).prompt() == prompt
        assert parse_prompt(prompt).metadata.manufacturer == description.metadata.manufacturer
    # the written form a text encoder saved before this change was trained on is still produced for it
    assert ct.prompt("legacy") == ("Age: None; Gender: None; Scanner: None Philips; Modality: CT; Voxel size: (1.0, 1.0, 2.0); "
                                   "Imaging parameter kVp and kernel: (120.0, None)")
    assert parse_prompt(ct.prompt("legacy")) == ct


def test_text_encoders_saved_before_prompt_styles_keep_their_prompts() -> None:
    from unisyn_v2.metadata.fields import ImageMetadata
    from unisyn_v2.metadata.prompts import ImageDescription
    from unisyn_v2.metadata.tokenizer import MetadataTokenizer
    from unisyn_v2.networks.conditioners import TextConditioner

    new = MetadataTokenizer.default()
    saved_before = {k: v for k, v in new.to_dict().items() if k != "prompt_style"}
    assert MetadataTokenizer.from_dict(new.to_dict()).prompt_style == "compact"
    old = MetadataTokenizer.from_dict(saved_before)
    assert old.prompt_style == "legacy"

    class Recorder(torch.nn.Module):
        embed_dim = 2

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.ones(ids.shape[0], 2)

    ct = ImageDescription("CT", ImageMetadata(manufacturer="Philips"))
    for tokenizer, prompt in ((old, ct.prompt("legacy")), (new, ct.prompt())):
        conditioner = TextConditioner(tokenizer, Recorder())
        conditioner.embed([ct])
        assert list(conditioner._cache) == [prompt]


def test_wrong_dataset_id_lists_the_datasets_that_exist(unisyn_dirs: dict[str, Path]) -> None:
    from unisyn_v2.dataset.ids import DatasetNotFoundError, resolve_dataset_name

    (unisyn_dirs["raw"] / "Dataset900_UniSynDemo").mkdir()
    (unisyn_dirs["results"] / "Dataset001_Blob").mkdir()
    (unisyn_dirs["raw"] / "notes").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no dataset with id 007 .*\(existing: Dataset001_Blob, Dataset900_UniSynDemo\)"):
        resolve_dataset_name("7")
    for folder in (unisyn_dirs["raw"] / "Dataset900_UniSynDemo", unisyn_dirs["results"] / "Dataset001_Blob"):
        folder.rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"\(existing: none\)"):
        resolve_dataset_name("7")


def test_checkpoint_cut_short_without_an_error_is_refused_and_the_old_one_kept(tmp_path: Path, monkeypatch) -> None:
    """torch.save stopping short on a full disk must not replace the previous checkpoint with a torn one."""
    from unisyn_v2.training import checkpointing

    path = tmp_path / "fold_0" / "checkpoint_latest.pth"
    save_checkpoint_atomic(path, {"network_weights": {"w": torch.zeros(4096)}})
    previous = path.read_bytes()
    real_save = torch.save

    def short_save(state, target) -> None:
        real_save(state, target)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(checkpointing.torch, "save", short_save)
    with pytest.raises(OSError, match=r"cannot write .*checkpoint_latest.pth: the written file is incomplete .*needs about 16.4 kB"):
        save_checkpoint_atomic(path, {"network_weights": {"w": torch.ones(4096)}})
    assert path.read_bytes() == previous and sorted(p.name for p in path.parent.iterdir()) == ["checkpoint_latest.pth"]
