"""Tests for metrics, evaluation protocols, folder evaluation and figures."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from unisyn_v2.evaluation.evaluate import evaluate_folders, json_safe, match_files
from unisyn_v2.evaluation.figures import save_comparison_figure
from unisyn_v2.evaluation.metrics import bone_metrics, mae, mse, psnr, ssim3d
from unisyn_v2.evaluation.protocols import (
    SYNTHRAD_DATA_RANGE,
    Protocol,
    evaluate_pair,
    papers_scale,
    synthrad_clip,
)


def _smooth_volume(shape=(16, 18, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, s) for s in shape), indexing="ij")
    return np.sin(4 * z) + np.cos(3 * y) * x + 0.05 * rng.standard_normal(shape)


def test_identical_images():
    a = _smooth_volume()
    assert psnr(a, a, data_range=2.0) == math.inf
    assert ssim3d(a, a, data_range=2.0) == pytest.approx(1.0)
    assert mae(a, a) == 0.0 and mse(a, a) == 0.0


def test_known_mse_gives_known_psnr_and_constant_offset_mae():
    a = np.zeros((8, 8, 8))
    b = a + 0.1
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b, data_range=1.0) == pytest.approx(20.0)
    assert mae(a, b) == pytest.approx(0.1)
    assert mae(a, a - 25.0) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        psnr(a, b, data_range=0)


def test_ssim_decreases_with_noise_and_matches_skimage():
    a = _smooth_volume()
    rng = np.random.default_rng(1)
    values = [ssim3d(a, a + s * rng.standard_normal(a.shape), data_range=3.0) for s in (0.01, 0.1, 0.5)]
    assert 1.0 > values[0] > values[1] > values[2]
    skm = pytest.importorskip("skimage.metrics")
    b = a + 0.2 * rng.standard_normal(a.shape)
    assert ssim3d(a, b, 3.0) == pytest.approx(skm.structural_similarity(a, b, data_range=3.0), abs=1e-10)
    ref = skm.structural_similarity(a, b, data_range=3.0, gaussian_weights=True, use_sample_covariance=False)
    assert ssim3d(a, b, 3.0, window=11, gaussian=True) == pytest.approx(ref, abs=1e-10)


def test_mask_restricts_computation():
    a = _smooth_volume()
    b = a.copy()
    mask = np.zeros(a.shape, dtype=np.uint8)
    mask[:, :, :10] = 1
    b[:, :, 13:] += 5.0  # errors only outside the mask (and beyond the SSIM window reach)
    assert psnr(a, b, data_range=3.0, mask=mask) == math.inf
    assert mae(a, b, mask=mask) == 0.0
    assert ssim3d(a, b, data_range=3.0, mask=mask) == pytest.approx(1.0)
    assert ssim3d(a, b, data_range=3.0) < 0.99
    with pytest.raises(ValueError, match="empty"):
        mae(a, b, mask=np.zeros_like(mask))


def test_bone_metrics_hand_computed():
    ref = np.full((2, 2, 4), 40.0)
    pred = ref.copy()
    ref[0, 0, :] = [1000.0, 800.0, 500.0, 301.0]  # 4 bone voxels
    pred[0, 0, :] = [900.0, 800.0, 200.0, 40.0]  # 2 of them found (errors 100, 0, 300, 261 HU)
    pred[1, 1, 0] = 400.0  # one false bone voxel
    res = bone_metrics(ref, pred)
    assert res["bone_dice"] == pytest.approx(2 * 2 / (4 + 3))
    assert res["bone_mae"] == pytest.approx((100 + 0 + 300 + 261) / 4)
    mask = np.ones(ref.shape)
    mask[0, 0, 2:] = 0  # leaves out the 2 missed bone voxels
    mask[1, 1, 0] = 0  # and the false one
    assert bone_metrics(ref, pred, mask) == {"bone_dice": 1.0, "bone_mae": pytest.approx(50.0)}
    assert bone_metrics(ref, pred, threshold_hu=850.0) == {"bone_dice": pytest.approx(2 * 1 / (1 + 1)), "bone_mae": 100.0}
    with pytest.raises(ValueError, match="empty"):
        bone_metrics(ref, pred, np.zeros(ref.shape))


def test_bone_metrics_without_reference_bone():
    soft = np.full((3, 3, 3), 40.0)
    neither = bone_metrics(soft, soft + 10.0)
    assert neither["bone_dice"] == 1.0 and math.isnan(neither["bone_mae"])
    spurious = soft.copy()
    spurious[1, 1, 1] = 700.0
    only_pred = bone_metrics(soft, spurious)
    assert only_pred["bone_dice"] == 0.0 and math.isnan(only_pred["bone_mae"])
    assert bone_metrics(spurious, soft) == {"bone_dice": 0.0, "bone_mae": 660.0}


def test_papers_scaling():
    img = np.arange(1000, dtype=np.float64).reshape(10, 10, 10) + 50
    s = papers_scale(img)
    assert s.min() == 0.0 and s.max() == 1.0
    assert np.all(s[img >= np.percentile(img, 99.5)] == 1.0)
    res = evaluate_pair(img, img * 3, Protocol.PAPERS)  # per-image scaling removes a global gain
    assert res["protocol"] == "papers" and res["psnr"] > 200 and res["mae"] == pytest.approx(0.0, abs=1e-12)


def test_reference_protocol_uses_one_affine_map_from_the_reference():
    rng = np.random.default_rng(0)
    clean = np.repeat([10.0, 30.0, 40.0], 4000).reshape(12, 10, 100)  # three "tissues"
    noisy = clean + rng.normal(0.0, 4.0, clean.shape)
    mask = np.ones(clean.shape)
    lo, hi = np.percentile(noisy, [0.5, 99.5])
    res = evaluate_pair(noisy, clean, Protocol.REFERENCE, mask)
    assert res["protocol"] == "reference"
    assert res["mae"] == pytest.approx(np.abs(noisy - clean).mean() / (hi - lo))
    assert res["psnr"] == pytest.approx(10 * math.log10((hi - lo) ** 2 / ((noisy - clean) ** 2).mean()))
    # the denoised image beats a second noisy copy; papers' own-minimum scaling shifts the smooth one
    other = clean + rng.normal(0.0, 4.0, clean.shape)
    assert res["psnr"] > evaluate_pair(noisy, other, "reference", mask)["psnr"] + 2.5
    assert evaluate_pair(noisy, clean, "papers", mask)["psnr"] < res["psnr"] - 3.0
    # a gain is an error here (units matter), unlike under the papers protocol
    assert evaluate_pair(noisy, 2 * noisy, "reference", mask)["psnr"] < 10.0


def test_synthrad_clipping():
    assert synthrad_clip(np.array([-3000.0, 0.0, 5000.0])).tolist() == [-1024.0, 0.0, 3000.0]
    ref = np.full((8, 8, 8), 100.0)
    pred = ref.copy()
    pred[0, 0, 0] = 10000.0  # clipped to 3000 -> error 2900 HU, not 9900
    res = evaluate_pair(ref, pred, "synthrad")
    assert res["protocol"] == "synthrad"
    assert res["mae"] == pytest.approx(2900.0 / 512)
    assert res["psnr"] == pytest.approx(10 * math.log10(SYNTHRAD_DATA_RANGE**2 / (2900.0**2 / 512)))
    mask = np.ones(ref.shape)
    mask[0, 0, 0] = 0
    masked = evaluate_pair(ref, pred, "synthrad", mask=mask)
    assert masked["mae"] == 0.0 and masked["psnr"] == math.inf and masked["ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        evaluate_pair(ref, pred, "nonsense")


def _write(path, array, spacing=(1.0, 1.0, 2.0)):
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_evaluate_folders_writes_valid_json_and_csv(tmp_path):
    ref_dir, pred_dir, mask_dir = tmp_path / "ref", tmp_path / "pred", tmp_path / "mask"
    for d in (ref_dir, pred_dir, mask_dir):
        d.mkdir()
    rng = np.random.default_rng(0)
    for case in ("sub1", "sub10"):
        ref = rng.uniform(-1000, 2000, size=(9, 10, 11))
        _write(ref_dir / f"{case}.nii.gz", ref)
        _write(mask_dir / f"{case}.nii.gz", np.ones(ref.shape))
        pred = ref if case == "sub1" else ref + rng.normal(0, 50, ref.shape)
        _write(pred_dir / f"{case}_ct.nii.gz", pred)
    _write(ref_dir / "sub2.nii.gz", np.zeros((9, 10, 11)))  # no prediction -> reported missing
    out = tmp_path / "eval" / "summary.json"
    summary = evaluate_folders(ref_dir, pred_dir, Protocol.SYNTHRAD, mask_dir=mask_dir, output_file=out)
    assert summary["n_cases"] == 2 and summary["missing_predictions"] == ["sub2.nii.gz"]
    loaded = json.loads(out.read_text())  # strict JSON: inf is the string "inf"
    assert loaded["protocol"] == "synthrad"
    by_case = {c["case"]: c for c in loaded["per_case"]}
    assert by_case["sub1"]["prediction"] == "sub1_ct.nii.gz" and by_case["sub1"]["psnr"] == "inf"
    assert by_case["sub10"]["prediction"] == "sub10_ct.nii.gz" and 0 < by_case["sub10"]["mae"] < 100
    assert loaded["mean"]["psnr"] == "inf"
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["case"] for r in rows] == ["sub1", "sub10"] and float(rows[1]["ssim"]) < 1.0
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_folders_shape_mismatch_names_files(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "p").mkdir()
    _write(tmp_path / "r" / "a.nii.gz", np.zeros((8, 8, 8)))
    _write(tmp_path / "p" / "a.nii.gz", np.zeros((8, 8, 9)))
    with pytest.raises(ValueError, match="a.nii.gz"):
        evaluate_folders(tmp_path / "r", tmp_path / "p", "papers")


def test_match_files_ambiguity(tmp_path):
    refs = [tmp_path / "a.nii.gz"]
    with pytest.raises(ValueError, match="several"):
        match_files(refs, [tmp_path / "a_ct.nii.gz", tmp_path / "a_mr.nii.gz"])
    matched, unmatched = match_files(refs, [tmp_path / "a.nii.gz", tmp_path / "a_ct.nii.gz", tmp_path / "b.nii.gz"])
    assert matched["a.nii.gz"].name == "a.nii.gz" and [p.name for p in unmatched] == ["b.nii.gz"]
    assert json.dumps(json_safe({"x": float("nan"), "y": [np.float32(-np.inf)]}), allow_nan=False)


def test_comparison_figure(tmp_path):
    ref = _smooth_volume((12, 16, 20))
    path = save_comparison_figure(
        tmp_path / "fig" / "case.png", ref * 0.5, ref + 0.1, ref, spacing_zyx=(3.0, 1.0, 1.0)
    )
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_source = save_comparison_figure(tmp_path / "b.png", None, ref, ref)
    assert no_source.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["b.png", "case.png"]
