"""dataset.json parsing, id resolution and the integrity check on good and broken datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raw_fixtures import write_blob_dataset
from unisyn_v2.cli.plan_and_preprocess import plan_and_preprocess_main, verify_main
from unisyn_v2.dataset.description import DatasetError, load_dataset_description
from unisyn_v2.dataset.ids import DatasetNotFoundError, resolve_dataset_name
from unisyn_v2.dataset.image_io import Geometry, read_image, write_image
from unisyn_v2.dataset.integrity import verify_dataset_integrity


@pytest.fixture
def dataset(unisyn_dirs: dict[str, Path]) -> Path:
    return write_blob_dataset(unisyn_dirs["raw"] / "Dataset001_Blob", num_cases=2)


def _edit(root: Path, change) -> None:
    data = json.loads((root / "dataset.json").read_text())
    change(data)
    (root / "dataset.json").write_text(json.dumps(data))


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_good_dataset_verifies(dataset: Path, capsys) -> None:
    assert verify_dataset_integrity(dataset) == []
    assert verify_main(["-d", "1"]) == 0
    description = load_dataset_description(dataset)
    assert description.case("case_001").modalities == ["T1w", "CT", "FDG-PET"]


def test_id_resolution(dataset: Path, unisyn_dirs: dict[str, Path]) -> None:
    assert resolve_dataset_name("1") == resolve_dataset_name("001") == resolve_dataset_name("Dataset001_Blob") == "Dataset001_Blob"
    with pytest.raises(DatasetNotFoundError, match="no dataset with id 007"):
        resolve_dataset_name(7)
    (unisyn_dirs["raw"] / "Dataset001_Other").mkdir()
    with pytest.raises(DatasetNotFoundError, match="ambiguous"):
        resolve_dataset_name(1)


BROKEN = {
    "missing file": (lambda root, data: data["cases"][0]["images"][0].update(file="case_000/nothing.nii.gz"), "does not exist"),
    "unknown modality": (lambda root, data: data["cases"][0]["images"][0].update(modality="DWI"), "unknown modality"),
    "TE > TR": (lambda root, data: data["cases"][0]["images"][0]["metadata"].update(echo_time=5000.0), "shorter than repetition_time"),
    "escaping path": (lambda root, data: data["cases"][0]["images"][0].update(file="../../etc/passwd"), "escapes the folder"),
    "wrong type": (lambda root, data: data["cases"][0]["images"][0]["metadata"].update(flip_angle="eight"), "must be a number"),
    "duplicate id": (lambda root, data: data["cases"].append(dict(data["cases"][0])), "duplicated case id"),
    "single modality": (lambda root, data: data["cases"][1].update(images=data["cases"][1]["images"][:1]), "at least 2 modalities"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_dataset_reports_and_writes_nothing(dataset: Path, unisyn_dirs: dict[str, Path], name: str, capsys) -> None:
    change, expected = BROKEN[name]
    _edit(dataset, lambda data: change(dataset, data))
    before = _snapshot(dataset)
    problems = verify_dataset_integrity(dataset)
    assert any(expected in str(p) for p in problems), problems
    assert plan_and_preprocess_main(["-d", "1", "--no_pbar"]) != 0
    assert expected in capsys.readouterr().err
    assert _snapshot(dataset) == before
    assert list(unisyn_dirs["preprocessed"].iterdir()) == []


def test_image_level_problems_are_all_listed(dataset: Path) -> None:
    array, geometry = read_image(dataset / "case_000/case_000_CT.nii.gz")
    array[0, 0, 0] = np.nan
    write_image(dataset / "case_000/case_000_CT.nii.gz", array, geometry)
    shifted = Geometry(geometry.shape_zyx, geometry.spacing_xyz, (99.0, 0.0, 0.0), geometry.direction)
    write_image(dataset / "case_001/case_001_T1w.nii.gz", read_image(dataset / "case_001/case_001_T1w.nii.gz")[0], shifted)
    problems = [str(p) for p in verify_dataset_integrity(dataset)]
    assert any("NaN" in p and "case_000" in p for p in problems)
    assert any("geometry differs" in p and "case_001" in p for p in problems)


def test_four_d_and_corrupt_files(dataset: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(dataset / "case_000/case_000_T1w.nii.gz"))
    (dataset / "case_001/case_001_CT.nii.gz").write_bytes(b"not a nifti")
    problems = [str(p) for p in verify_dataset_integrity(dataset)]
    assert any("3D" in p for p in problems)
    assert any("case_001_CT" in p and "cannot read" in p for p in problems)


def test_schema_errors_name_case_and_field(dataset: Path) -> None:
    _edit(dataset, lambda data: data["cases"][0].update(colour="blue"))
    with pytest.raises(DatasetError) as info:
        load_dataset_description(dataset)
    assert "case case_000" in str(info.value) and "colour" in str(info.value)
