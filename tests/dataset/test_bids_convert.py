"""unisyn_convert_bids: discovery, metadata in BIDS units, the run rule, rigid co-registration that recovers a
known transform, the phantom round trip (BIDS export -> converter gives the same dataset) and verification."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from unisyn_v2.cli import convert_bids as convert_cli
from unisyn_v2.dataset.bids_convert import ConversionSettings, convert_bids
from unisyn_v2.dataset.bids_discovery import discover_bids
from unisyn_v2.dataset.description import load_dataset_description
from unisyn_v2.dataset.image_io import Geometry, read_image, write_image
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.phantom import generate_phantom_dataset
from unisyn_v2.phantom.bids_export import export_bids

VOXEL_MM = 6.0
MODALITIES = ("T1w", "T2w", "CT", "FDG-PET")


@pytest.fixture(scope="module")
def phantom_bids(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw phantom dataset, its BIDS export): 2 cases of 32^3 voxels at 6 mm."""
    root = tmp_path_factory.mktemp("phantom")
    raw = generate_phantom_dataset(root / "Dataset001_Phantom", 2, seed=3, shape=(32, 32, 32),
                                   voxel_size_mm=(VOXEL_MM,) * 3, modalities=MODALITIES, complete=True)
    return raw, export_bids(raw, root / "bids")


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_phantom_round_trip_gives_the_same_dataset(phantom_bids: tuple[Path, Path], tmp_path: Path) -> None:
    raw, bids = phantom_bids
    before = _hashes(bids)
    settings = ConversionSettings(brain_mask=str(bids / "derivatives" / "unisyn_phantom"), threads=1)
    report = convert_bids(bids, tmp_path / "Dataset002_FromBids", "FromBids", settings)
    assert report.problems == [] and report.skipped == []
    original, converted = load_dataset_description(raw), load_dataset_description(tmp_path / "Dataset002_FromBids")
    for case_a, case_b in zip(original.cases, converted.cases, strict=True):
        assert (case_a.case_id, case_a.subject) == (case_b.case_id, case_b.subject)
        assert [(i.modality, i.metadata) for i in case_a.images] == [(i.modality, i.metadata) for i in case_b.images]
        for image_a, image_b in zip(case_a.images, case_b.images):  # aligned already: the same voxels, untouched
            np.testing.assert_array_equal(read_image(original.path_of(image_a.file))[0],
                                          read_image(converted.path_of(image_b.file))[0])
        np.testing.assert_array_equal(read_image(original.path_of(case_a.brain_mask))[0],
                                      read_image(converted.path_of(case_b.brain_mask))[0])
    registered = [i["registration"] for c in report.cases for i in c["images"] if "registration" in i]
    assert len(registered) == 2 * (len(MODALITIES) - 1) and not any(r["applied"] for r in registered)
    assert all(r["after"] <= r["before"] for r in registered)
    assert _hashes(bids) == before  # the BIDS files are only read
    saved = json.loads((tmp_path / "Dataset002_FromBids" / "conversion_report.json").read_text())
    t2w = next(i for i in saved["cases"][0]["images"] if i["modality"] == "T2w")
    assert t2w["metadata_from"]["echo_time"] == "sub-001/anat/sub-001_T2w.json"
    assert saved["cases"][0]["subject_from"] == {"age": "participants.tsv", "sex": "participants.tsv"}


def _move_header(path: Path, transform: sitk.Euler3DTransform) -> None:
    """Rewrite an image so that the content at reference point p sits at transform(p): the voxels stay, the
    header (origin, direction) moves, so the truth is exact."""
    image = sitk.ReadImage(str(path))
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    centre, shift = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    origin, direction = np.array(image.GetOrigin()), np.array(image.GetDirection()).reshape(3, 3)
    image.SetOrigin(tuple(matrix @ (origin - centre) + centre + shift))
    image.SetDirection(tuple((matrix @ direction).ravel()))
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("modality", ["FDG-PET", "T2w"])
def test_converter_recovers_a_known_rigid_transform(phantom_bids: tuple[Path, Path], tmp_path: Path, modality: str) -> None:
    raw, source = phantom_bids
    bids = tmp_path / "bids"
    import shutil

    shutil.copytree(source, bids)
    truth = sitk.Euler3DTransform()
    truth.SetCenter((4.0, -6.0, 3.0))
    truth.SetRotation(math.radians(4.0), math.radians(-3.0), math.radians(5.0))
    truth.SetTranslation((5.0, -4.0, 3.0))
    name = {"FDG-PET": "pet/sub-001_trc-FDG_pet.nii.gz", "T2w": "anat/sub-001_T2w.nii.gz"}[modality]
    _move_header(bids / "sub-001" / name, truth)
    report = convert_bids(bids, tmp_path / "Dataset003_Moved", "Moved", ConversionSettings(threads=1))
    assert report.problems == []
    item = next(i for i in report.cases[0]["images"] if i["modality"] == modality)
    assert item["registration"]["applied"] and item["registration"]["after"] < item["registration"]["before"]
    estimate = sitk.ReadTransform(str(tmp_path / "Dataset003_Moved" / item["transform"]))
    mask, geometry = read_image(raw / "sub-001" / "sub-001_brainmask.nii.gz")
    reference = sitk.ReadImage(str(raw / "sub-001" / "sub-001_T1w.nii.gz"))
    errors = [np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p)))
              for p in (reference.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]) for idx in np.argwhere(mask > 0))]
    assert max(errors) < VOXEL_MM / 2, f"registration error up to {max(errors):.2f} mm"  # measured 0.7-1.2 mm
    assert np.mean(errors) < VOXEL_MM / 3
    # the resampled image is the original again (up to interpolation), on the reference grid
    converted = load_dataset_description(tmp_path / "Dataset003_Moved").case("sub-001")
    file = next(i.file for i in converted.images if i.modality == modality)
    resampled, grid = read_image(tmp_path / "Dataset003_Moved" / file)
    original = read_image(raw / "sub-001" / f"sub-001_{modality}.nii.gz")[0]
    assert grid.matches(geometry)
    brain = mask > 0
    assert np.corrcoef(resampled[brain], original[brain])[0, 1] > 0.9


def _write(path: Path, sidecar: dict | None = None, spacing: float = 2.0) -> None:
    seed = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16)
    array = np.random.default_rng(seed).uniform(10, 100, (8, 8, 8)).astype(np.float32)
    write_image(path, array, Geometry((8, 8, 8), (spacing,) * 3, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def _tiny_tree(root: Path) -> Path:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "Tiny", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t89+\tmale\nsub-02\tn/a\tfemale\n")
    (root / "T1w.json").write_text(json.dumps({"RepetitionTime": 2.3, "MagneticFieldStrength": 3}))  # inherited
    anat = root / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    _write(anat / "sub-01_ses-1_T1w.nii.gz", {"EchoTime": 0.00287, "InversionTime": 0.9, "FlipAngle": 8})
    _write(anat / "sub-01_ses-1_run-1_T2w.nii.gz", {"RepetitionTime": 4.0, "EchoTime": 0.09}, spacing=2.0)
    _write(anat / "sub-01_ses-1_run-2_T2w.nii.gz", {"RepetitionTime": 4.0, "EchoTime": 0.1}, spacing=2.0)
    _write(anat / "sub-01_ses-1_acq-fast_FLAIR.nii.gz", {"RepetitionTime": 9.0, "EchoTime": 0.1, "InversionTime": 2.5})
    _write(anat / "sub-01_ses-1_FLAIR.nii.gz", {"RepetitionTime": 9.0, "EchoTime": 0.1, "InversionTime": 2.5}, spacing=3.0)
    pet = root / "sub-02" / "pet"
    pet.mkdir(parents=True)
    _write(pet / "sub-02_trc-PIB_pet.nii.gz", {"TracerName": "PIB"})
    _write(pet / "sub-02_trc-FDG_pet.nii.gz", {"TracerName": "[18F]FDG", "InjectedRadioactivity": 250,
                                                "InjectedRadioactivityUnits": "MBq", "InjectionStart": 0,
                                                "ScanStart": 2700, "Units": "Bq/mL"})
    (root / "sub-02" / "anat").mkdir()
    _write(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz", {"EchoTime": 0.003, "RepetitionTime": 2300})  # ms by mistake
    _write(root / "sub-02" / "anat" / "sub-02_T2w.nii.gz", {"EchoTime": 0.1, "RepetitionTime": 5})
    _write(root / "sub-03" / "anat" / "sub-03_T1w.nii.gz", {"EchoTime": 0.003, "RepetitionTime": 2.3})  # alone
    (root / "derivatives" / "x" / "sub-01").mkdir(parents=True)  # never read as a subject
    return root


def test_discovery_metadata_in_ms_runs_and_skip_reasons(tmp_path: Path) -> None:
    root = _tiny_tree(tmp_path / "bids")
    cases, skipped = discover_bids(root)
    assert [c.case_id for c in cases] == ["sub-01_ses-1", "sub-02", "sub-03"]
    first = cases[0]
    assert (first.subject.age, first.subject.sex) == (89.0, "M")
    assert [i.modality for i in first.images] == ["T1w", "T2w", "FLAIR"]
    assert first.images[1].path.name == "sub-01_ses-1_run-2_T2w.nii.gz"  # same voxels: the highest run
    assert first.images[2].path.name == "sub-01_ses-1_acq-fast_FLAIR.nii.gz"  # smaller voxels beat no acq- label
    assert first.images[0].sidecar_files == ("T1w.json", "sub-01/ses-1/anat/sub-01_ses-1_T1w.json")
    reasons = {s.path: s.reason for s in skipped}
    assert "highest run" in reasons["sub-01/ses-1/anat/sub-01_ses-1_run-1_T2w.nii.gz"]
    assert "PIB" in reasons["sub-02/pet/sub-02_trc-PIB_pet.nii.gz"]
    assert [i.path.name for i in discover_bids(root, run=1)[0][0].images][1] == "sub-01_ses-1_run-1_T2w.nii.gz"
    assert len(discover_bids(root, all_runs=True)[0][0].images) == 5

    report = convert_bids(root, tmp_path / "Dataset004_Tiny", "Tiny", ConversionSettings(threads=1))
    description = load_dataset_description(tmp_path / "Dataset004_Tiny")
    t1w = description.case("sub-01_ses-1").images[0].metadata
    assert (t1w.repetition_time, t1w.echo_time, t1w.inversion_time, t1w.field_strength) == (2300.0, 2.87, 900.0, 3.0)
    pet = description.case("sub-02").images[1]
    assert (pet.modality, pet.metadata.tracer, pet.metadata.uptake_time, pet.metadata.unit) == ("FDG-PET", "FDG", 45.0, "Bq/ml")
    reasons = {s.path: s.reason for s in report.skipped}
    assert "seconds" in reasons["sub-02/anat/sub-02_T1w.nii.gz"]  # 2300 "s": the sidecar gave ms
    assert report.cases[1]["notes"] == ["no T1w: T2w is the reference"]
    assert "at least 2 modalities" in reasons["sub-03"] and [c.case_id for c in description.cases] == ["sub-01_ses-1", "sub-02"]
    assert verify_dataset_integrity(tmp_path / "Dataset004_Tiny") == []
    flair = next(i for i in report.cases[0]["images"] if i["modality"] == "FLAIR")
    assert flair["action"].startswith("resampled")  # another grid: resampled onto the reference's


def test_cli_auto_mask_and_refusals(phantom_bids: tuple[Path, Path], unisyn_dirs: dict[str, Path],
                                    capsys: pytest.CaptureFixture) -> None:
    raw, bids = phantom_bids
    assert convert_cli.main([str(bids), "-d", "7", "--brain_mask", "auto", "--copy", "--threads", "1"]) == 0
    out = unisyn_dirs["raw"] / "Dataset007_Phantom"  # the name from dataset_description.json
    converted = load_dataset_description(out)
    for case in converted.cases:
        auto = read_image(converted.path_of(case.brain_mask))[0] > 0
        truth = read_image(raw / case.case_id / f"{case.case_id}_brainmask.nii.gz")[0] > 0
        assert 2 * (auto & truth).sum() / (auto.sum() + truth.sum()) > 0.85  # from the CT: soft tissue inside the skull
    assert (out / converted.cases[0].images[0].file).stat().st_nlink == 1  # --copy: no hard link
    capsys.readouterr()
    assert convert_cli.main([str(bids), "-d", "7"]) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    assert convert_cli.main([str(bids), "-d", "8", "--run", "1", "--all_runs"]) == 2
