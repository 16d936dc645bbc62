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


# ------------------------------------------- issue 18 (part C): hostile datasets that verify, warn or report
T1 = "case_000/case_000_T1w.nii.gz"


def _shift_origin(root: Path, millimetres: float) -> None:
    array, geometry = read_image(root / T1)
    origin = (geometry.origin_xyz[0] + millimetres, *geometry.origin_xyz[1:])
    write_image(root / T1, array, Geometry(geometry.shape_zyx, geometry.spacing_xyz, origin, geometry.direction))


ACCEPTED = {  # name: (change the dataset, check the parsed description)
    "dataset_json_with_bom": (lambda root: (root / "dataset.json").write_bytes(b"\xef\xbb\xbf" + (root / "dataset.json").read_bytes()),
                              lambda d: d.case("case_000").images[0].metadata.echo_time == 2.3),
    "sidecar_with_bom": (lambda root: (root / T1.replace(".nii.gz", ".json")).write_bytes(b'\xef\xbb\xbf{"ConvolutionKernel": "none"}'),
                         lambda d: d.case("case_000").images[0].metadata.reconstruction_kernel == "none"),
    "modality_in_other_letter_case": (lambda root: _edit(root, lambda data: data["cases"][0]["images"][0].update(modality="t1W")),
                                      lambda d: d.case("case_000").modalities[0] == "T1w"),
    "origin_shifted_by_a_micrometre": (lambda root: _shift_origin(root, 0.001), lambda d: True),
    "short_tr_gradient_echo_in_ms": (lambda root: _edit(root, lambda data: data["cases"][0]["images"][0].update(
        metadata={"repetition_time": 8.0, "echo_time": 3.0, "flip_angle": 20.0})), lambda d: True),
    "sidecar_agreeing_but_for_letter_case_and_words": (
        lambda root: (root / T1.replace(".nii.gz", ".json")).write_text(json.dumps(
            {"RepetitionTime": 2.3, "EchoTime": 0.0023, "MagneticFieldStrength": 3, "Manufacturer": "SIEMENS Healthineers"})),
        lambda d: True),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_odd_but_usable_datasets_verify_without_warnings(name: str, dataset: Path, caplog, capsys) -> None:
    change, check = ACCEPTED[name]
    change(dataset)
    with caplog.at_level("WARNING", logger="unisyn_v2"):
        assert verify_dataset_integrity(dataset) == []
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    assert check(load_dataset_description(dataset))
    assert verify_main(["-d", "1"]) == 0


def test_sidecar_contradicting_dataset_json_warns_naming_both_values_and_files(dataset: Path, caplog, capsys) -> None:
    sidecar = "case_000/case_000_T1w.json"
    (dataset / sidecar).write_text(json.dumps({"RepetitionTime": 1.9, "FlipAngle": 9, "MagneticFieldStrength": 7,
                                               "Manufacturer": "GE", "InversionTime": 0.9}))
    with caplog.at_level("WARNING", logger="unisyn_v2"):
        assert verify_dataset_integrity(dataset) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 4, warnings  # InversionTime 0.9 s agrees with 900 ms
    for field, mine, theirs in (("repetition_time", "2300 ms", "1900 ms"), ("flip_angle", "8 degrees", "9 degrees"),
                                ("field_strength", "3 T", "7 T"), ("manufacturer", "'Siemens'", "'GE'")):
        line = next(w for w in warnings if f"field metadata.{field}]" in w)
        assert f"dataset.json gives {mine}" in line and f"BIDS sidecar {sidecar} gives {theirs}" in line, line
        assert "case case_000" in line and f"file {T1}" in line
    assert load_dataset_description(dataset).case("case_000").images[0].metadata.field_strength == 3.0  # dataset.json wins


def test_verification_logs_progress_at_a_low_rate(dataset: Path, caplog, monkeypatch) -> None:
    from unisyn_v2.dataset import integrity

    with caplog.at_level("INFO", logger="unisyn_v2"):
        verify_dataset_integrity(dataset)
    assert not [r for r in caplog.records if "verified" in r.getMessage()]  # a quick run stays quiet
    monkeypatch.setattr(integrity, "PROGRESS_INTERVAL_S", 0.0)
    caplog.clear()
    with caplog.at_level("INFO", logger="unisyn_v2"):
        verify_dataset_integrity(dataset)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("verified 1/2 cases (0 problem(s) so far") for m in messages), messages
    assert any(m.startswith("verified 2 cases in") for m in messages), messages


def test_plan_and_preprocess_verifies_again_when_the_raw_data_changed(dataset: Path, unisyn_dirs: dict[str, Path],
                                                                      capsys) -> None:
    """A constant image added after a first plan is reported with its case and file before plans are rewritten."""
    assert plan_and_preprocess_main(["-d", "1", "--no_pbar", "-np", "1", "-pl", "cpu", "--no_pp"]) == 0
    planned = {p: p.read_bytes() for p in (unisyn_dirs["preprocessed"] / "Dataset001_Blob").glob("*.json")}
    array, geometry = read_image(dataset / T1)
    write_image(dataset / T1, np.full_like(array, 100.0), geometry)
    capsys.readouterr()
    assert plan_and_preprocess_main(["-d", "1", "--no_pbar", "-np", "1", "-pl", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "case case_000" in err and T1 in err and "constant" in err, err
    assert {p: p.read_bytes() for p in (unisyn_dirs["preprocessed"] / "Dataset001_Blob").glob("*.json")} == planned
    assert not list((unisyn_dirs["preprocessed"] / "Dataset001_Blob").glob("*/*.npy"))
