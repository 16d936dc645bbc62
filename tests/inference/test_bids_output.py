"""BIDS on the prediction side: ``unisyn_predict -i BIDS_ROOT`` reads a BIDS tree, ``--bids_out`` writes the
derivatives layout (paths, sidecar with Sources/GeneratedBy, dataset_description.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unisyn_v2.cli import predict as predict_cli
from unisyn_v2.inference import predictor as predictor_module
from unisyn_v2.inference.bids_output import derivative_path
from unisyn_v2.inference.inputs import discover_cases, is_generated
from unisyn_v2.phantom import generate_phantom_dataset
from unisyn_v2.phantom.bids_export import export_bids

from predictor_fixtures import make_plans, stand_in_loader, write_model_folder


def test_derivative_paths() -> None:
    root = Path("/d")
    assert derivative_path(root, "sub-01", "T1w") == root / "unisyn/sub-01/anat/sub-01_desc-synth_T1w.nii.gz"
    assert derivative_path(root, "sub-01_ses-2", "PD") == root / "unisyn/sub-01/ses-2/anat/sub-01_ses-2_desc-synth_PDw.nii.gz"
    assert derivative_path(root, "sub-01", "FDG-PET") == root / "unisyn/sub-01/pet/sub-01_trc-FDG_desc-synth_pet.nii.gz"
    assert derivative_path(root, "sub-01", "CT") == root / "unisyn/sub-01/ct/sub-01_desc-synth_ct.nii.gz"
    assert derivative_path(root, "patient_7", "T1CE") == root / "unisyn/sub-patient7/anat/sub-patient7_ce-gadolinium_desc-synth_T1w.nii.gz"


@pytest.fixture
def bids_tree(tmp_path: Path) -> Path:
    raw = generate_phantom_dataset(tmp_path / "Dataset001_P", 2, seed=1, shape=(16, 18, 18), voxel_size_mm=(8.0, 8.0, 8.0),
                                   modalities=("T1w", "CT", "FDG-PET"), complete=True)
    return export_bids(raw, tmp_path / "bids")


def test_predict_reads_a_bids_tree(bids_tree: Path) -> None:
    cases = discover_cases([bids_tree])
    assert [c.case_id for c in cases] == ["sub-001", "sub-002"]
    t1w = cases[0].images[0]
    assert t1w.description.modality == "T1w" and 1000 < t1w.description.metadata.repetition_time < 5000  # s -> ms
    assert t1w.description.subject.age is not None and t1w.metadata_given
    assert cases[0].brain_mask == bids_tree / "derivatives/unisyn_phantom/sub-001/anat/sub-001_desc-brain_mask.nii.gz"


def test_predict_bids_in_bids_out(bids_tree: Path, tmp_path: Path, unisyn_dirs: dict[str, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predictor_module, "load_fold", stand_in_loader)
    write_model_folder(unisyn_dirs["results"] / "Dataset001_Stand", make_plans(), network="constant:0.5")
    out, deriv = tmp_path / "out", tmp_path / "deriv"
    argv = ["-i", str(bids_tree), "-o", str(out), "--bids_out", str(deriv), "-d", "1", "-c", "3d", "--target", "CT",
            "--disable_progress_bar", "--device", "cpu"]
    assert predict_cli.main(argv + ["--source-image", "sub-001_T1w.nii.gz"]) == 2  # one image named, two cases
    assert predict_cli.main(argv) == 0
    image = deriv / "unisyn/sub-001/ct/sub-001_desc-synth_ct.nii.gz"
    assert image.is_file() and (deriv / "unisyn/sub-002/ct/sub-002_desc-synth_ct.nii.gz").is_file()
    sidecar = json.loads(image.with_name("sub-001_desc-synth_ct.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-001/anat/sub-001_T1w.nii.gz"]  # the source chosen for CT: the T1w
    assert sidecar["GeneratedBy"][0]["Name"] == "unisyn_v2" and sidecar["Units"] == "HU"
    assert "Modality: CT" in sidecar["TargetPrompt"] and sidecar["SourceImages"][0]["modality"] == "T1w"
    description = json.loads((deriv / "unisyn/dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "unisyn_v2"
    assert description["DatasetLinks"] == {"raw": bids_tree.resolve().as_uri()}
    assert is_generated(image)  # never taken as a source by a later run
    assert image.read_bytes() == (out / "sub-001_CT.nii.gz").read_bytes()
    # a second run (--continue_prediction) republishes without error; a non-derivative description is refused
    assert predict_cli.main(argv + ["--continue_prediction"]) == 0
    (deriv / "unisyn/dataset_description.json").write_text(json.dumps({"Name": "x", "DatasetType": "raw"}))
    assert predict_cli.main(argv + ["--continue_prediction"]) == 2
