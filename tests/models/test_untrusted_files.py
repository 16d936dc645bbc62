"""Files from elsewhere are data, never code: pickles that would run code are refused before they can,
and paths read from JSON stay inside their folder."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

from training_fixtures import make_trainer, write_text_encoder, write_training_dataset
from unisyn_v2.io_utils import confined_path
from unisyn_v2.networks.text_artifact import load_text_encoder_artifact
from unisyn_v2.training.checkpointing import load_checkpoint
from unisyn_v2.models.folder import build_conditioner, load_trained_model
from unisyn_v2.training.variants import OneHotGFMTrainer


class Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (with worse code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return pathlib.Path.touch, (self.marker,)


def test_malicious_checkpoint_is_refused_and_runs_nothing(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    write_training_dataset(unisyn_dirs["preprocessed"])
    trainer = make_trainer(OneHotGFMTrainer, unisyn_dirs, num_epochs=1, iterations_per_epoch=1, validation_iterations=1,
                           final_validation=False)
    trainer.run()
    checkpoint = trainer.fold_folder / "checkpoint_final.pth"
    marker = tmp_path / "pwned"
    state = torch.load(checkpoint, weights_only=True)
    state["extra"] = {"note": Payload(marker)}
    torch.save(state, checkpoint)

    with pytest.raises(RuntimeError, match=r"refusing to load checkpoint .*checkpoint_final.pth.*could run code"):
        load_checkpoint(checkpoint)
    with pytest.raises(RuntimeError, match="refusing to load checkpoint"):
        load_trained_model(trainer.model_folder, 0)  # what unisyn_predict calls
    resumed = make_trainer(OneHotGFMTrainer, unisyn_dirs, num_epochs=1, continue_training=True)
    with pytest.raises(RuntimeError, match="refusing to load checkpoint"):
        resumed.run()  # --c
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)  # the payload is real: a full unpickle would have run it
    assert marker.exists()


def test_malicious_text_encoder_weights_are_refused(unisyn_dirs: dict[str, Path], tmp_path: Path) -> None:
    _folder, plans = write_training_dataset(unisyn_dirs["preprocessed"])
    artifact = write_text_encoder(unisyn_dirs["results"], plans)
    marker = tmp_path / "pwned"
    weights = torch.load(artifact / "weights.pt", weights_only=True)
    torch.save({**weights, "extra": Payload(marker)}, artifact / "weights.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*weights.pt.*could run code"):
        load_text_encoder_artifact(artifact)
    assert not marker.exists()


def test_confined_paths(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    (root / "sub").mkdir(parents=True)
    assert confined_path(root, "sub/image.nii.gz") == (root / "sub" / "image.nii.gz").resolve()
    assert confined_path(root, "sub/../image.nii.gz") == (root / "image.nii.gz").resolve()  # stays inside
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    (root / "link").symlink_to(tmp_path)
    for bad in ("../secret.txt", "sub/../../secret.txt", str(outside), "/etc/passwd", "link/secret.txt"):
        with pytest.raises(ValueError, match="escapes the folder"):
            confined_path(root, bad)


def test_model_folder_text_encoder_path_stays_inside(tmp_path: Path) -> None:
    info = {"conditioning": {"kind": "text", "text_encoder": "../../elsewhere/text_encoder"}}
    with pytest.raises(ValueError, match="escapes the folder"):
        build_conditioner(tmp_path / "model", info)
    info["conditioning"]["text_encoder"] = "/abs/text_encoder"
    with pytest.raises(ValueError, match="escapes the folder"):
        build_conditioner(tmp_path / "model", info)


def test_dataset_json_paths_stay_inside(tmp_path: Path) -> None:
    from unisyn_v2.dataset.description import load_dataset_description

    root = tmp_path / "Dataset005_Bad"
    root.mkdir()
    (tmp_path / "outside.nii.gz").write_bytes(b"")
    for file in ("../outside.nii.gz", str(tmp_path / "outside.nii.gz")):
        case = {"id": "a", "images": [{"file": file, "modality": "T1w"}]}
        (root / "dataset.json").write_text(json.dumps({"name": "Bad", "cases": [case]}))
        with pytest.raises(Exception, match="escapes the folder"):
            load_dataset_description(root)
