"""Pathology in the phantom (issue 17, item 4): the spec and its validation, lesion physics, label maps
beside the cases (each case's ``lesion_mask`` in dataset.json, its pathology in phantom.json), and cases without
pathology left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phantom_fixtures import stripe_means
from phantom_fixtures import stripes as tissue_stripes
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.phantom import (
    PhantomSpec, draw_subject, generate_phantom_dataset, read_phantom_spec, render_subject, simulate_image,
)
from unisyn_v2.cli.phantom import main as phantom_main
from unisyn_v2.phantom.generator import case_anatomy
from unisyn_v2.phantom.pathology import LESION_LABELS, parse_lesion_kinds, with_pathology_values
from unisyn_v2.phantom.protocols import flair_null_ti
from unisyn_v2.phantom.tissues import ALL_TISSUES, PATHOLOGY_TISSUES

GRID = {"shape": (32, 32, 32), "voxel_size_mm": (6.4, 6.4, 6.4)}
OFF = {"noise": False, "bias": False, "blur": False}


def stripes(thickness: int = 6) -> dict[str, np.ndarray]:
    return tissue_stripes(ALL_TISSUES, thickness, inplane=8)


def means(image: np.ndarray, thickness: int = 6) -> dict[str, float]:
    return stripe_means(image, ALL_TISSUES, thickness)


@pytest.fixture(scope="module")
def sick():
    return with_pathology_values(draw_subject(np.random.default_rng(3), age=60.0), np.random.default_rng(4))


def render(modality: str, subject, **metadata) -> dict[str, float]:
    meta = ImageMetadata(field_strength=3.0, voxel_size=(1.0, 1.0, 1.0), **metadata)
    return means(simulate_image(modality, stripes(), meta, subject, np.random.default_rng(0), **OFF))


def test_lesion_mr_contrast(sick) -> None:
    t2 = render("T2w", sick, repetition_time=5000.0, echo_time=100.0)
    flair = render("FLAIR", sick, repetition_time=9000.0, echo_time=100.0, inversion_time=flair_null_ti(9000.0, 3.0))
    t1 = render("T1w", sick, repetition_time=2300.0, echo_time=2.5, inversion_time=900.0, flip_angle=9.0)
    t1ce = render("T1CE", sick, repetition_time=2300.0, echo_time=2.5, inversion_time=900.0, flip_angle=9.0)
    # long T2: infarct cavity, necrosis and oedema bright on T2w
    assert t2["infarct"] > 3 * t2["wm"] and t2["necrosis"] > 2 * t2["wm"] and t2["oedema"] > 1.5 * t2["wm"]
    # FLAIR: oedema, gliosis and WMH bright, the fluid-like cavity suppressed nearly like CSF
    for bright in ("oedema", "gliosis", "lesion"):
        assert flair[bright] > 1.3 * flair["wm"], bright
    assert flair["infarct"] < 0.5 * flair["gliosis"] and flair["infarct"] < flair["wm"]
    # T1w: cavity dark like CSF, tumour and oedema hypointense to WM; gadolinium enhances only the viable rim
    assert t1["infarct"] < 0.5 * t1["wm"] and t1["oedema"] < t1["wm"] and t1["enhancing"] < t1["wm"]
    assert t1ce["enhancing"] > 1.3 * t1["enhancing"]
    assert t1ce["necrosis"] == pytest.approx(t1["necrosis"]) and t1ce["oedema"] == pytest.approx(t1["oedema"])


def test_lesion_ct_and_tracer_uptake(sick) -> None:
    ct = render("CT", sick, kvp=120.0)
    assert abs(ct["infarct"] - ct["csf"]) < 12.0 and ct["infarct"] < ct["wm"] - 8.0  # CSF-like cavity
    assert ct["oedema"] < ct["wm"] and ct["enhancing"] > ct["wm"]
    fdg = render("FDG-PET", sick, uptake_time=45.0)
    assert fdg["infarct"] < 1.0 and fdg["necrosis"] < 1.0  # no metabolism in cavity and necrosis
    assert fdg["enhancing"] > 0.8 * fdg["gm"] and fdg["enhancing"] > 2.0 * fdg["wm"]  # hot rim
    assert fdg["oedema"] < fdg["wm"] and fdg["gliosis"] < fdg["wm"]
    av45 = render("AV45-PET", sick, uptake_time=50.0)
    assert av45["infarct"] < 0.5 * av45["wm"]
    # healthy values untouched by the pathology draws
    plain = draw_subject(np.random.default_rng(3), age=60.0)
    assert all(sick.ct_hu[t] == plain.ct_hu[t] and sick.fdg_suv[t] == plain.fdg_suv[t] for t in plain.ct_hu)


def test_spec_defaults_off_and_validation(tmp_path: Path) -> None:
    spec = PhantomSpec(0)
    assert spec.lesions == () and "lesions" not in spec.to_dict() and "lesion_fraction" not in spec.to_dict()
    sick = PhantomSpec(0, lesions="tumor, infarct", lesion_fraction=0.25)
    assert sick.lesions == ("infarct", "tumour")
    assert PhantomSpec.from_dict(json.loads(json.dumps(sick.to_dict()))) == sick
    assert parse_lesion_kinds("all") == ("infarct", "wmh", "tumour")
    with pytest.raises(ValueError, match="unknown kind stroke"):
        PhantomSpec(0, lesions="stroke")
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="lesion_fraction"):
            PhantomSpec(0, lesions="wmh", lesion_fraction=bad)
    with pytest.raises(ValueError, match="phantom.json: lesion_fraction"):
        PhantomSpec.from_dict({**sick.to_dict(), "lesion_fraction": 2.0})
    with pytest.raises(ValueError, match="phantom.json: lesions must be a list"):
        PhantomSpec.from_dict({**sick.to_dict(), "lesions": "infarct"})
    maps = tmp_path / "maps"
    maps.mkdir()
    with pytest.raises(ValueError, match="lesions need the procedural anatomy"):
        PhantomSpec(0, tissue_maps_dir=maps, lesions="wmh")


def test_every_kind_is_painted_and_labelled() -> None:
    spec = PhantomSpec(0, shape=(48, 48, 48), voxel_size=(4.0, 4.0, 4.0), lesions="all", lesion_fraction=1.0)
    anatomy = case_anatomy(spec, 0)
    labels = anatomy.lesion_labels()
    assert set(np.unique(labels)) == set(LESION_LABELS)  # infarct, WMH, enhancing, oedema, necrosis, gliosis
    assert set(PATHOLOGY_TISSUES) <= set(anatomy.tissues)
    np.testing.assert_allclose(sum(anatomy.tissues.values()), 1.0, atol=1e-5)
    assert (anatomy.mask[labels > 0] > 0).mean() > 0.95  # lesions lie in the brain mask
    # the infarct replaces cortex: less grey matter than the same head without pathology
    healthy = case_anatomy(PhantomSpec(0, shape=(48, 48, 48), voxel_size=(4.0, 4.0, 4.0)), 0)
    assert anatomy.tissues["gm"].sum() < healthy.tissues["gm"].sum() - 20
    assert np.array_equal(anatomy.tissues["bone"], healthy.tissues["bone"])  # skull and scalp unchanged


def test_dataset_with_lesions(tmp_path: Path) -> None:
    root = generate_phantom_dataset(tmp_path / "ds", 6, 2, modalities=["T1w", "FLAIR", "CT"], complete=True,
                                    lesions="all", lesion_fraction=0.5, **GRID)
    plain = generate_phantom_dataset(tmp_path / "plain", 6, 2, modalities=["T1w", "FLAIR", "CT"], complete=True, **GRID)
    assert verify_dataset_integrity(root) == []
    record = json.loads((root / "phantom.json").read_text())
    dataset = json.loads((root / "dataset.json").read_text())
    assert "pathology (infarct, wmh, tumour) in 50% of cases" in dataset["description"]
    assert record["lesion_labels"]["1"] == "infarct cavity"
    assert read_phantom_spec(root).lesions == ("infarct", "wmh", "tumour")
    sick = [c for c, r in record["cases"].items() if r["pathology"]]
    assert 0 < len(sick) < 6
    for case in dataset["cases"]:
        cid = case["id"]
        entry = record["cases"][cid]
        assert entry["lesions"] == f"{cid}/{cid}_lesions.nii.gz"
        assert all("lesions" not in image["file"] for image in case["images"])  # not an image of the case
        assert case["lesion_mask"] == entry["lesions"]  # what training oversamples
        labels, _ = read_image(root / entry["lesions"])
        assert labels.shape == (32, 32, 32) and set(np.unique(labels)) <= set(LESION_LABELS)
        if cid in sick:
            assert {1, 3} <= set(np.unique(labels).astype(int)) and entry["infarct_territory"] in ("MCA", "PCA", "ACA")
        else:  # a case the fraction left healthy is the lesion-free phantom's case, byte for byte
            assert not set(np.unique(labels).astype(int)) - {0, 2}  # age-related WMH at most
            for image in case["images"]:
                assert (root / image["file"]).read_bytes() == (plain / image["file"]).read_bytes()
    assert all("lesion_mask" not in case for case in json.loads((plain / "dataset.json").read_text())["cases"])
    # rendering rebuilds a case with pathology exactly
    cid = sick[0]
    image = next(i for i in next(c for c in dataset["cases"] if c["id"] == cid)["images"] if i["modality"] == "FLAIR")
    written, _ = read_image(root / image["file"])
    np.testing.assert_array_equal(render_subject(read_phantom_spec(root), cid, "FLAIR", noise=True), written)


def test_cli_lesions(tmp_path: Path) -> None:
    out = tmp_path / "Dataset005_Lesions"
    args = ["-d", "5", "--cases", "3", "--shape", "24", "24", "24", "--voxel_size", "8", "8", "8",
            "--modalities", "T1w", "T2w", "--output_dir", str(out), "--lesions", "infarct,tumour", "--lesion_fraction", "1"]
    assert phantom_main(args) == 0
    record = json.loads((out / "phantom.json").read_text())
    assert record["lesions"] == ["infarct", "tumour"] and record["lesion_fraction"] == 1.0
    assert all(r["pathology"] == ["infarct", "tumour"] for r in record["cases"].values())
    assert phantom_main(["-d", "6", "--output_dir", str(tmp_path / "bad"), "--lesions", "cyst"]) == 2
