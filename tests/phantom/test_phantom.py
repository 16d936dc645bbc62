"""Physics and contract tests of the brain phantom (tiny grids, a few seconds in total)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from phantom_fixtures import stripe_means
from phantom_fixtures import stripes as tissue_stripes
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.modalities import get_modality
from unisyn_v2.phantom import (
    PHANTOM_MODALITIES, TISSUES, brain_mask, draw_protocol, draw_subject, generate_phantom_dataset, simulate_image,
    simulate_subject,
)
from unisyn_v2.cli.phantom import main as phantom_main
from unisyn_v2.phantom.generator import case_rng, choose_modalities
from unisyn_v2.phantom.mri import tissue_signals
from unisyn_v2.phantom.protocols import flair_null_ti, nominal_protocol
from unisyn_v2.phantom.tissue_maps import VolumeGeometry, write_nifti

SHAPE = (40, 40, 40)
VOXEL = (5.0, 5.0, 5.0)
OFF = {"noise": False, "bias": False, "blur": False}


@pytest.fixture(scope="module")
def head() -> tuple[dict[str, np.ndarray], object]:
    rng = np.random.default_rng(7)
    subject = draw_subject(rng, age=40.0, sex="F")
    return simulate_subject(rng, SHAPE, VOXEL, subject=subject), subject


def stripes(thickness: int = 6) -> dict[str, np.ndarray]:
    return tissue_stripes(TISSUES, thickness, inplane=12)


def means(image: np.ndarray, thickness: int = 6) -> dict[str, float]:
    return stripe_means(image, TISSUES, thickness)


def mri(modality: str, field: float = 3.0, seed: int = 0, subject=None, **timing: float) -> dict[str, float]:
    subject = subject or draw_subject(None, age=50.0)
    metadata = ImageMetadata(field_strength=field, voxel_size=(1.0, 1.0, 1.0), **timing)
    image = simulate_image(modality, stripes(), metadata, subject, np.random.default_rng(seed))
    return means(image)


def test_fractions_partial_volume_and_mask(head) -> None:
    tissues, _ = head
    total = sum(tissues.values())
    assert set(tissues) == set(TISSUES)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    boundary = ((tissues["gm"] > 0.05) & (tissues["gm"] < 0.95)).sum()
    assert boundary > 100, "partial-volume voxels expected on the cortical ribbon"
    for t in ("fat", "muscle", "bone", "marrow", "csf", "gm", "wm", "deep_gm"):
        assert tissues[t].sum() > 5, t
    mask = brain_mask(tissues)
    assert mask.dtype == np.uint8 and 0.05 < mask.mean() < 0.5
    assert tissues["bone"][mask > 0].mean() < 0.01  # the skull is outside the brain mask


def test_t2w_longer_te_raises_csf_to_wm_ratio() -> None:
    short = mri("T2w", repetition_time=4000.0, echo_time=80.0, flip_angle=90.0)
    long = mri("T2w", repetition_time=4000.0, echo_time=120.0, flip_angle=90.0)
    assert long["csf"] / long["wm"] > 1.3 * short["csf"] / short["wm"]
    assert short["csf"] > short["gm"] > short["wm"]  # T2 contrast


@pytest.mark.parametrize("field", [1.5, 3.0])
def test_flair_nulls_csf_only_near_its_null_point(field: float) -> None:
    tr, te = 9000.0, 110.0
    nulled = mri("FLAIR", field, repetition_time=tr, echo_time=te, inversion_time=flair_null_ti(tr, field))
    assert nulled["csf"] < 0.3 * nulled["wm"]
    assert nulled["lesion"] > 1.3 * nulled["wm"]  # white-matter hyperintensities stay bright
    far = mri("FLAIR", field, repetition_time=tr, echo_time=te, inversion_time=1200.0)
    assert far["csf"] > far["wm"]


@pytest.mark.parametrize("field", [1.5, 3.0])
def test_t1w_white_brighter_than_grey_brighter_than_csf(field: float, head) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):  # every drawn protocol (MPRAGE or spoiled GRE) keeps the contrast
        metadata = draw_protocol("T1w", rng, VOXEL, field_strength=field, manufacturer="Siemens")
        s = dict(zip(TISSUES, tissue_signals("T1w", metadata, draw_subject(rng))))
        assert s["wm"] > s["gm"] > s["csf"], metadata
    timing = {k: v for k, v in nominal_protocol("T1w", field).to_dict().items() if k != "field_strength"}
    m = mri("T1w", field, **timing)
    assert m["wm"] > 1.3 * m["gm"] and m["gm"] > 1.3 * m["csf"]
    tissues, subject = head  # and on the anatomy, in mostly-pure voxels, with noise and bias
    image = simulate_image("T1w", tissues, nominal_protocol("T1w", field), subject, np.random.default_rng(1))
    wm, gm, csf = (image[tissues[t] > 0.6].mean() for t in ("wm", "gm", "csf"))
    assert wm > gm > csf


def test_t1ce_enhances_vessels_and_swi_darkens_veins() -> None:
    timing = {"repetition_time": 2300.0, "echo_time": 2.5, "inversion_time": 900.0, "flip_angle": 9.0}
    plain, enhanced = mri("T1w", **timing), mri("T1CE", **timing)
    assert enhanced["vessel"] > 3.0 * plain["vessel"] and enhanced["vessel"] > enhanced["wm"]
    assert enhanced["choroid"] > enhanced["wm"]
    gre = {"repetition_time": 35.0, "echo_time": 20.0, "flip_angle": 15.0}
    assert mri("SWI", **gre)["vessel"] < 0.3 * mri("T2star", **gre)["vessel"]


def test_ct_hounsfield_units_and_kvp() -> None:
    subject = draw_subject(np.random.default_rng(0), age=50.0)
    values = {}
    for kvp in (100.0, 140.0):
        image = simulate_image("CT", stripes(), ImageMetadata(kvp=kvp), subject, np.random.default_rng(1))
        values[kvp] = means(image)
        assert values[kvp]["bone"] > 700.0
        assert abs(values[kvp]["air"] + 1000.0) < 3.0
        for t in ("gm", "wm", "deep_gm"):
            assert 20.0 <= values[kvp][t] <= 45.0, t
        assert values[kvp]["gm"] > values[kvp]["wm"] > values[kvp]["csf"] > values[kvp]["fat"]
    assert values[100.0]["bone"] > values[140.0]["bone"] + 50.0  # lower kVp, higher bone HU
    noisy = simulate_image("CT", stripes(), ImageMetadata(kvp=120.0), subject, np.random.default_rng(1))
    assert 2.0 < noisy[1:5].std() < 12.0  # noise in the air slab: a few HU


def test_fdg_grey_white_ratio_and_ageing(head) -> None:
    metadata = ImageMetadata(tracer="FDG", unit="SUV", injected_dose=250.0, uptake_time=45.0, voxel_size=VOXEL)
    young, old = draw_subject(None, age=40.0), draw_subject(None, age=80.0)
    m = means(simulate_image("FDG-PET", stripes(), metadata, young, np.random.default_rng(0), **OFF))
    assert 2.8 <= m["gm"] / m["wm"] <= 3.2  # about 3:1 at the reference age
    assert 6.0 <= m["gm"] <= 10.0 and 6.0 <= m["deep_gm"] <= 9.0 and 2.0 <= m["wm"] <= 3.0 and m["csf"] < 1.0
    o = means(simulate_image("FDG-PET", stripes(), metadata, old, np.random.default_rng(0), **OFF))
    decline = 1.0 - (o["gm"] / o["wm"]) / (m["gm"] / m["wm"])
    assert 0.05 * 4 * 0.9 < decline < 0.10 * 4  # 5-10% per decade over four decades
    tissues, subject = head  # unblurred, noise-free image on the anatomy: least squares recovers the ratio
    image = simulate_image("FDG-PET", tissues, metadata, subject, np.random.default_rng(0), **OFF)
    design = np.stack([tissues[t].ravel() for t in TISSUES], axis=1)
    uptake = dict(zip(TISSUES, np.linalg.lstsq(design, image.ravel(), rcond=None)[0]))
    assert 2.5 <= uptake["gm"] / uptake["wm"] <= 4.0


def test_pet_psf_matches_scanner_fwhm_in_mm() -> None:
    maps = {t: np.zeros((41, 41, 41), dtype=np.float32) for t in TISSUES}
    maps["air"][:] = 1.0
    maps["air"][20, 20, 20], maps["gm"][20, 20, 20] = 0.0, 1.0
    metadata = ImageMetadata(tracer="FDG", unit="SUV", scanner_model="Biograph mCT", voxel_size=(2.0, 2.0, 2.0))
    image = simulate_image("FDG-PET", maps, metadata, draw_subject(None), np.random.default_rng(0), noise=False)
    profile = image[20, 20].astype(np.float64)
    x = np.arange(41) - 20
    fwhm_mm = 2.0 * np.sqrt(8 * np.log(2) * (profile * x**2).sum() / profile.sum())
    assert abs(fwhm_mm - 5.0) < 0.25


def _amyloid_subjects() -> tuple[object, object]:
    found: dict[bool, object] = {}
    for seed in range(200):
        s = draw_subject(np.random.default_rng(seed), age=85.0)
        found.setdefault(s.amyloid_positive, s)
        if len(found) == 2:
            return found[True], found[False]
    raise AssertionError("no amyloid-positive and -negative subjects in 200 draws")


def test_av45_positive_vs_negative_and_tau_pattern() -> None:
    positive, negative = _amyloid_subjects()
    metadata = ImageMetadata(tracer="AV45", unit="SUVR", injected_dose=370.0, uptake_time=50.0, voxel_size=VOXEL)
    pos = means(simulate_image("AV45-PET", stripes(), metadata, positive, np.random.default_rng(0), **OFF))
    neg = means(simulate_image("AV45-PET", stripes(), metadata, negative, np.random.default_rng(0), **OFF))
    assert 1.3 <= pos["gm"] <= 1.6 and 1.0 <= neg["gm"] <= 1.1
    assert 1.5 <= neg["wm"] / neg["gm"] <= 2.0  # non-specific white-matter binding
    ages = [draw_subject(np.random.default_rng(s), age=a).amyloid_positive for s in range(300) for a in (50.0, 85.0)]
    assert sum(ages[1::2]) > 3 * sum(ages[0::2])  # positivity more likely with age
    tau_meta = ImageMetadata(tracer="TAU", unit="SUVR", injected_dose=370.0, uptake_time=80.0, voxel_size=VOXEL)
    tau_pos = next(s for s in (draw_subject(np.random.default_rng(k), age=85.0) for k in range(300)) if s.tau_positive)
    t = means(simulate_image("TAU-PET", stripes(), tau_meta, tau_pos, np.random.default_rng(0), **OFF))
    n = means(simulate_image("TAU-PET", stripes(), tau_meta, negative if not negative.tau_positive else draw_subject(None),
                             np.random.default_rng(0), **OFF))
    assert t["mtl"] > 1.4 * t["gm"] and n["mtl"] < 1.3 * n["gm"]  # medial temporal focus in positives only
    assert n["deep_gm"] > n["gm"] and n["choroid"] > n["gm"]  # off-target binding


def test_atrophy_and_lesions_grow_with_age() -> None:
    young = simulate_subject(np.random.default_rng(5), SHAPE, VOXEL, subject=draw_subject(None, age=25.0))
    old = simulate_subject(np.random.default_rng(5), SHAPE, VOXEL, subject=draw_subject(None, age=85.0))
    assert old["csf"].sum() > 1.3 * young["csf"].sum()
    assert old["gm"].sum() < young["gm"].sum()
    assert young["lesion"].sum() == 0.0 and old["lesion"].sum() > 0.0


def test_determinism(head) -> None:
    a = simulate_subject(np.random.default_rng(11), (24, 24, 24), (8.0, 8.0, 8.0))
    b = simulate_subject(np.random.default_rng(11), (24, 24, 24), (8.0, 8.0, 8.0))
    c = simulate_subject(np.random.default_rng(12), (24, 24, 24), (8.0, 8.0, 8.0))
    assert all(np.array_equal(a[t], b[t]) for t in TISSUES)
    assert not np.array_equal(a["gm"], c["gm"])
    tissues, subject = head
    metadata = nominal_protocol("FLAIR")
    first = simulate_image("FLAIR", tissues, metadata, subject, np.random.default_rng(3))
    again = simulate_image("FLAIR", tissues, metadata, subject, np.random.default_rng(3))
    other = simulate_image("FLAIR", tissues, metadata, subject, np.random.default_rng(4))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def _read(path: Path) -> tuple[np.ndarray, tuple]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def test_dataset_json_and_files(tmp_path: Path) -> None:
    out = generate_phantom_dataset(tmp_path / "ds", num_cases=6, seed=3, shape=(32, 32, 32), voxel_size_mm=(6.4, 6.4, 6.4))
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["name"] == "Phantom" and len(dataset["cases"]) == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    for case in dataset["cases"]:
        assert SubjectMetadata.from_dict(case["subject"]).problems() == []
        assert 20.0 <= case["subject"]["age"] <= 90.0
        mask, geometry = _read(out / case["brain_mask"])
        assert mask.dtype == np.uint8 and mask.shape == (32, 32, 32) and mask.any()
        assert len(case["images"]) >= 2 and len({i["modality"] for i in case["images"]}) == len(case["images"])
        for entry in case["images"]:
            modality = get_modality(entry["modality"]).name
            assert modality in PHANTOM_MODALITIES and entry["file"] == f"{case['id']}/{case['id']}_{modality}.nii.gz"
            metadata = ImageMetadata.from_dict(entry["metadata"])
            assert metadata.problems() == [] and metadata.voxel_size == (6.4, 6.4, 6.4)
            array, image_geometry = _read(out / entry["file"])
            assert array.dtype == np.float32 and np.allclose(image_geometry[1], geometry[1])
            assert image_geometry[0] == geometry[0] and np.allclose(image_geometry[2], geometry[2])
            assert image_geometry[3] == geometry[3]
    # The same seed writes the same dataset; another seed a different one.
    again = generate_phantom_dataset(tmp_path / "again", num_cases=6, seed=3, shape=(32, 32, 32), voxel_size_mm=(6.4, 6.4, 6.4))
    assert json.loads((again / "dataset.json").read_text())["cases"] == dataset["cases"]
    first = dataset["cases"][0]["images"][0]["file"]
    assert np.array_equal(_read(out / first)[0], _read(again / first)[0])
    other = generate_phantom_dataset(tmp_path / "other", num_cases=6, seed=4, shape=(32, 32, 32), voxel_size_mm=(6.4, 6.4, 6.4))
    assert json.loads((other / "dataset.json").read_text())["cases"] != dataset["cases"]


def test_metadata_reproduces_the_written_contrast(tmp_path: Path) -> None:
    out = generate_phantom_dataset(tmp_path / "ds", 3, seed=1, shape=(32, 32, 32), voxel_size_mm=(6.4, 6.4, 6.4),
                                   modalities=["T2w", "FLAIR", "FDG-PET"])
    case = json.loads((out / "dataset.json").read_text())["cases"][0]
    subject = draw_subject(case_rng(1, 0, 1))
    tissues = simulate_subject(case_rng(1, 0, 2), (32, 32, 32), (6.4, 6.4, 6.4), subject=subject)
    for entry in case["images"]:
        written = _read(out / entry["file"])[0]
        clean = simulate_image(entry["modality"], tissues, ImageMetadata.from_dict(entry["metadata"]), subject,
                               np.random.default_rng(0), noise=False, bias=False)
        assert np.corrcoef(written.ravel(), clean.ravel())[0, 1] > 0.95, entry["modality"]


def test_modality_subsets_skull_strip_and_refusal(tmp_path: Path) -> None:
    out = generate_phantom_dataset(tmp_path / "ds", 4, seed=2, shape=(24, 24, 24), voxel_size_mm=(8.5, 8.5, 8.5),
                                   modalities=["t1w", "CT"], skull_strip=True)
    for case in json.loads((out / "dataset.json").read_text())["cases"]:
        assert [i["modality"] for i in case["images"]] == ["T1w", "CT"]
        mask = _read(out / case["brain_mask"])[0]
        t1, ct = (_read(out / i["file"])[0] for i in case["images"])
        assert np.all(t1[mask == 0] == 0.0) and np.all(ct[mask == 0] == -1024.0) and t1[mask > 0].max() > 0
    with pytest.raises(FileExistsError):
        generate_phantom_dataset(out, 1, seed=0, shape=(24, 24, 24), voxel_size_mm=(8.5, 8.5, 8.5))
    keep = out / "notes.txt"
    keep.write_text("mine")
    generate_phantom_dataset(out, 1, seed=0, shape=(24, 24, 24), voxel_size_mm=(8.5, 8.5, 8.5), overwrite=True)
    assert keep.read_text() == "mine"
    with pytest.raises(ValueError):
        generate_phantom_dataset(tmp_path / "one", 1, seed=0, modalities=["T1w"])
    with pytest.raises(ValueError):
        generate_phantom_dataset(tmp_path / "bad", 1, seed=0, modalities=["T1w", "Ultrasound"])


def test_modality_availability_patterns() -> None:
    rng = np.random.default_rng(0)
    draws = [choose_modalities(rng, PHANTOM_MODALITIES) for _ in range(500)]
    assert all(len(d) >= 2 for d in draws)
    assert 0.85 <= np.mean(["T1w" in d for d in draws]) <= 0.97
    assert len({tuple(d) for d in draws}) > 15  # varied subsets, not one fixed protocol
    assert all(choose_modalities(rng, ["CT", "FDG-PET"]) == ["CT", "FDG-PET"] for _ in range(20))


def test_user_tissue_maps(tmp_path: Path) -> None:
    tissues = simulate_subject(np.random.default_rng(0), (28, 28, 28), (7.0, 7.0, 7.0))
    geometry = VolumeGeometry((7.0, 7.0, 7.0), (1.0, 2.0, 3.0))
    for name in ("gm", "wm", "csf", "bone"):
        write_nifti(tissues[name], geometry, tmp_path / "maps" / f"{name}.nii.gz")
    out = generate_phantom_dataset(tmp_path / "ds", 2, seed=0, tissue_maps_dir=tmp_path / "maps")
    case = json.loads((out / "dataset.json").read_text())["cases"][0]
    array, (size, spacing, origin, _) = _read(out / case["images"][0]["file"])
    assert array.shape == (28, 28, 28) and np.allclose(spacing, 7.0) and np.allclose(origin, (1.0, 2.0, 3.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        generate_phantom_dataset(tmp_path / "ds2", 1, seed=0, tissue_maps_dir=tmp_path / "empty")


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNISYN_RAW", str(tmp_path / "raw"))
    args = ["-d", "7", "--cases", "2", "--seed", "1", "--shape", "24", "24", "24", "--voxel_size", "8.5", "8.5", "8.5"]
    assert phantom_main(args) == 0
    dataset = tmp_path / "raw" / "Dataset007_Phantom" / "dataset.json"
    assert dataset.is_file() and len(json.loads(dataset.read_text())["cases"]) == 2
    assert phantom_main(args) == 2  # refuses the non-empty folder
    assert phantom_main([*args, "--overwrite", "--name", "Other", "--output_dir", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x" / "dataset.json").read_text())["name"] == "Other"
    assert os.listdir(tmp_path / "raw") == ["Dataset007_Phantom"]


def test_generated_protocols_always_pass_the_integrity_check(tmp_path: Path) -> None:
    """Every drawn protocol is physically plausible (e.g. TE < TR for gradient echoes)."""
    from unisyn_v2.dataset.integrity import verify_dataset_integrity
    from unisyn_v2.phantom.protocols import draw_protocol

    rng = np.random.default_rng(0)
    for name in ("T1w", "T2w", "PD", "FLAIR", "T1CE", "SWI", "T2star", "CT", "FDG-PET", "AV45-PET", "TAU-PET"):
        for _ in range(200):
            assert draw_protocol(name, rng).problems() == [], name
    root = generate_phantom_dataset(tmp_path / "Dataset009_Check", num_cases=6, seed=3, shape=(24, 24, 24), voxel_size_mm=(8.0, 8.0, 8.0))
    assert verify_dataset_integrity(root) == []


def test_phantom_command_also_writes_a_bids_tree(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    assert phantom_main(["-d", "7", "--cases", "2", "--seed", "1", "--shape", "16", "16", "16", "--voxel_size", "12", "12",
                         "12", "--output_dir", str(tmp_path / "raw"), "--bids", str(bids), "--verbose"]) == 0
    assert (bids / "dataset_description.json").is_file() and sorted(p.name for p in bids.glob("sub-*"))
