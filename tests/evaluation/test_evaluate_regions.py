"""``unisyn_evaluate`` (issue 17): brain and head regions, bone metrics for CT, refusal of unit/scale mismatches."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.cli.evaluate import main
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.evaluation.evaluate import evaluate_folders
from unisyn_v2.evaluation.protocols import infer_modality, looks_like_hu, scale_mismatch

from predictor_fixtures import head_phantom, write_case_image

SHAPE = (14, 18, 18)


def _radius() -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    return np.sqrt(zz**2 + yy**2 + xx**2)


def _ct_folders(tmp_path: Path, with_skull: bool) -> tuple[Path, Path, Path]:
    """CT references with a 1200 HU skull; predictions = reference + 5 HU in the brain, skull kept or flattened to 40 HU."""
    ref, pred, brain = (tmp_path / n for n in ("ref", "pred", "brain"))
    radius = _radius()
    for index in range(2):
        case = f"sub-0{index}"
        ct = head_phantom(SHAPE, -1000.0, 40.0, 1200.0, seed=index)
        inside = radius < 0.6
        synthetic = np.where(inside, ct + 5.0, ct)
        if not with_skull:
            synthetic = np.where((radius >= 0.6) & (radius < 0.8), 40.0, synthetic)
        write_case_image(ref / f"{case}_CT.nii.gz", ct)
        write_case_image(pred / f"{case}_CT.nii.gz", synthetic)
        write_case_image(brain / f"{case}_CT.nii.gz", inside.astype(np.float32))
    return ref, pred, brain


def test_skull_less_ct_is_seen_by_head_and_bone_metrics_not_by_the_brain_mask(tmp_path: Path) -> None:
    ref, pred, brain = _ct_folders(tmp_path, with_skull=False)
    out = tmp_path / "eval" / "summary.json"
    assert main(["-ref", str(ref), "-pred", str(pred), "--mask", str(brain), "--protocol", "synthrad", "-o", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["region"] == "brain" and summary["head_mask"] == "derived"
    mean = summary["mean"]
    assert mean["mae"] == pytest.approx(5.0, abs=1e-3)  # the brain mask hides the missing skull ...
    shell = (_radius() >= 0.6) & (_radius() < 0.8)
    head = _radius() < 0.8  # the derived head (> -500 HU, holes filled) is the phantom's skull and brain
    expected_head_mae = (shell.sum() * 1160.0 + (head & ~shell).sum() * 5.0) / head.sum()
    assert mean["head_mae"] == pytest.approx(expected_head_mae, rel=1e-4)  # ... the head mask does not
    assert mean["bone_dice"] == 0.0 and mean["bone_mae"] == pytest.approx(1160.0)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert {"head_psnr", "head_ssim", "head_mae", "bone_dice", "bone_mae", "modality"} <= set(rows[0])
    assert rows[0]["modality"] == "CT" and float(rows[0]["bone_dice"]) == 0.0


def test_synthrad_without_brain_masks_scores_the_head_and_given_head_masks_are_used(tmp_path: Path) -> None:
    ref, pred, _ = _ct_folders(tmp_path, with_skull=True)
    summary = evaluate_folders(ref, pred, "synthrad", output_file=tmp_path / "a.json")
    assert summary["region"] == "head"
    case = summary["per_case"][0]
    assert case["mae"] == case["head_mae"] and case["bone_dice"] == 1.0 and case["bone_mae"] == 0.0
    # a given head mask (here: one half of the head) replaces the derived one
    heads = tmp_path / "heads"
    half = (_radius() < 0.8) & (np.arange(SHAPE[2])[None, None, :] < SHAPE[2] // 2)
    for index in range(2):
        write_case_image(heads / f"sub-0{index}.nii.gz", half.astype(np.float32))
    given = evaluate_folders(ref, pred, "synthrad", output_file=tmp_path / "b.json", head_mask_dir=heads)
    assert given["head_mask"] == "given" and given["head_mask_dir"] == str(heads)
    brain_half = half & (_radius() < 0.6)
    assert given["per_case"][0]["head_mae"] == pytest.approx(5.0 * brain_half.sum() / half.sum(), rel=1e-5)


def test_mri_references_get_head_metrics_and_no_bone_metrics(tmp_path: Path) -> None:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    mri = head_phantom(SHAPE, 0.0, 600.0, 900.0, seed=3)
    write_case_image(ref / "a_T2w.nii.gz", mri)
    write_case_image(pred / "a_T2w.nii.gz", mri * 1.1)
    summary = evaluate_folders(ref, pred, "reference", output_file=tmp_path / "s.json")
    case = summary["per_case"][0]
    assert summary["region"] == "image" and case["modality"] == "MRI-like"
    assert "bone_dice" not in case and "bone_dice" not in summary["mean"]
    assert math.isfinite(case["head_psnr"]) and case["head_psnr"] < case["psnr"]  # the error lives in the head
    # --modality CT on an MRI: the CT threshold (> -500) takes the whole image as head, and bone is scored
    forced = evaluate_folders(ref, pred, "reference", output_file=tmp_path / "t.json", modality="ct")
    assert forced["modality"] == "CT" and "bone_dice" in forced["per_case"][0]
    with pytest.raises(ValueError, match="unknown modality 'XRay'"):
        evaluate_folders(ref, pred, "reference", output_file=tmp_path / "u.json", modality="XRay")


def test_empty_derived_head_is_a_clear_error(tmp_path: Path) -> None:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    write_case_image(ref / "a.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    write_case_image(pred / "a.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    with pytest.raises(ValueError, match=r"a\.nii\.gz: the head mask derived from it .* is empty"):
        evaluate_folders(ref, pred, "papers", output_file=tmp_path / "s.json")


def test_eight_bit_reference_against_x1000_prediction_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's case: 8-bit FLAIR references scored against predictions on unisyn's x1000 MRI scale."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    flair = np.round(head_phantom(SHAPE, 0.0, 150.0, 60.0, seed=1))
    write_case_image(ref / "sub-001_FLAIR.nii.gz", flair)
    write_case_image(pred / "sub-001_FLAIR.nii.gz", flair / 150.0 * 1000.0)
    args = ["-ref", str(ref), "-pred", str(pred), "--protocol", "reference", "-o", str(tmp_path / "s.json")]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()[0]
    assert "reference sub-001_FLAIR.nii.gz p99 = " in err and "8-bit-like" in err and "prediction sub-001_FLAIR.nii.gz" in err
    assert "factor" in err and "--allow_scale_mismatch" in err
    assert not (tmp_path / "s.json").exists()
    assert main([*args, "--allow_scale_mismatch"]) == 0  # downgraded to a warning: scored, and badly
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mean"]["psnr"] < 0
    # papers scales each image to [0, 1] on its own: the same pair is scored (identity: > 100 dB), with a warning
    assert main([*args[:-4], "--protocol", "papers", "-o", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["mean"]["psnr"] > 100
    assert "the papers protocol scales each image" in capsys.readouterr().err


def test_ct_in_hu_against_shifted_ct_is_refused(tmp_path: Path) -> None:
    ref, pred, _ = _ct_folders(tmp_path, with_skull=True)
    shifted = tmp_path / "shifted"
    for path in sorted(pred.iterdir()):
        array, _ = read_image(path)
        write_case_image(shifted / path.name, array + 1024.0)  # CT stored as HU + 1024 (unsigned)
    with pytest.raises(ValueError, match=r"CT in HU, air at -1000.*only the reference looks like CT in HU.*--allow_scale_mismatch"):
        evaluate_folders(ref, shifted, "synthrad", output_file=tmp_path / "s.json")


def test_scale_mismatch_rules() -> None:
    head = _radius() < 0.8
    ct = head_phantom(SHAPE, -1000.0, 40.0, 1200.0)
    no_bone = np.where(head, 40.0, -1000.0)
    assert looks_like_hu(ct) and infer_modality(ct) == "CT" and infer_modality(no_bone) == "MRI-like"
    assert scale_mismatch(ct, no_bone, head) is None  # a CT without skull is a bad synthesis, not a unit error
    mri = head_phantom(SHAPE, 0.0, 600.0, 900.0)
    assert not looks_like_hu(mri)
    assert scale_mismatch(mri, mri * 4.0, head) is None  # within the factor 5: a gain error, scored
    assert "factor 6" in scale_mismatch(mri, mri * 6.0, head)
    assert "[0, 1] scale" in scale_mismatch(mri / mri.max(), mri, head)
    assert scale_mismatch(mri, np.zeros_like(mri), head) is None  # an empty prediction has no scale to compare
    assert "only the prediction looks like CT" in scale_mismatch(mri, ct, head)
    # an 8-bit reference (p99 ~ 250) against unisyn's x1000 MRI scale is only a factor ~4 apart, yet cannot be one unit
    eight_bit = np.round(mri / mri.max() * 255.0)
    assert "stored on a 0..255 scale" in scale_mismatch(eight_bit, eight_bit / 255.0 * 1000.0, head)
    assert scale_mismatch(eight_bit, eight_bit * 0.5, head) is None  # a dark prediction on the same scale: scored
    assert scale_mismatch(eight_bit + 0.5, eight_bit / 255.0 * 1000.0, head) is None  # not integer-valued: no cap
