"""The prediction has exactly the input's grid (oblique, anisotropic) and its units (CT in HU, PET in SUV)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from unisyn_v2.dataset.image_io import read_geometry, read_image
from unisyn_v2.inference.export import OutputExistsError, image_record, select_cases_to_run
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor

from predictor_fixtures import (
    ConstantNetwork, IdentityNetwork, conditioner, head_phantom, make_plans, oblique_direction, write_case_image,
)

SETTINGS = PredictionSettings(progress=False, tile_batch_size=8)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


@pytest.mark.parametrize("configuration", ["3d", "2.5d"])
def test_oblique_anisotropic_geometry_round_trip(tmp_path: Path, configuration: str) -> None:
    plans = make_plans(spacing_zyx=(2.0, 1.5, 1.5))
    array = head_phantom((18, 30, 26), 0.0, 600.0, 200.0)
    geometry = write_case_image(tmp_path / "in" / "sub-01_T1w.nii.gz", array, spacing_xyz=(0.9, 1.1, 3.0),
                                origin_xyz=(-31.7, 12.25, 40.5), direction=oblique_direction())
    written = read_geometry(tmp_path / "in" / "sub-01_T1w.nii.gz")
    predictor = UniSynPredictor([IdentityNetwork()], conditioner(plans), plans, configuration, settings=SETTINGS)
    [out] = predictor.predict([tmp_path / "in"], tmp_path / "out", "T1w")
    assert out.name == "sub-01_T1w.nii.gz"
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkFloat32
    result = read_geometry(out)
    assert result.shape_zyx == geometry.shape_zyx == written.shape_zyx
    np.testing.assert_allclose(result.spacing_xyz, written.spacing_xyz, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.origin_xyz, written.origin_xyz, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.direction, written.direction, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.direction, geometry.direction, rtol=0, atol=1e-5)
    assert not np.allclose(result.direction, np.eye(3).ravel())
    predicted, _ = read_image(out)
    assert np.isfinite(predicted).all()
    brain = array > 300
    # identity network on resampled data: the brain is reproduced in normalised units x 1000
    assert 600 < float(np.median(predicted[brain])) < 1400
    sidecar = json.loads((tmp_path / "out" / "sub-01_T1w.json").read_text())
    assert sidecar["target_modality"] == "T1w" and sidecar["unit"] == "normalised MRI units"
    assert sidecar["source_images"][0]["file"].endswith("sub-01_T1w.nii.gz")
    assert sidecar["GeneratedBy"][0]["Name"] == "unisyn_v2"
    assert _no_temp_files(tmp_path / "out")


def test_ct_output_in_hounsfield_units(tmp_path: Path) -> None:
    plans = make_plans(spacing_zyx=(2.0, 1.5, 1.5))
    array = head_phantom((16, 24, 22), -1000.0, 40.0, 1500.0)
    array[8, 12, 11] = 3500.0  # beyond the window: clipped to 3071
    array[0, 0, 0] = -1500.0  # below the window (outside the head: replaced by air)
    write_case_image(tmp_path / "in" / "case_CT.nii.gz", array, spacing_xyz=(1.5, 1.5, 2.0))
    predictor = UniSynPredictor([IdentityNetwork()], conditioner(plans), plans, "3d", settings=SETTINGS)
    [out] = predictor.predict([tmp_path / "in" / "case_CT.nii.gz"], tmp_path / "out", "CT")
    predicted, _ = read_image(out)
    expected = np.clip(array, -1024.0, 3071.0)
    expected[0, 0, 0] = -1000.0  # outside the crop box: the target's background (air)
    np.testing.assert_allclose(predicted, expected, atol=0.05)
    assert json.loads(out.with_name("case_CT.json").read_text())["unit"] == "HU"


@pytest.mark.parametrize(("target", "value", "expected", "unit"), [
    ("FDG-PET", 0.5, 4.0, "SUV"),  # x * dataset_scale (8.0)
    ("T2w", 0.25, 250.0, "normalised MRI units"),  # x * 1000
    ("CT", 0.25, 0.25 * 4095 - 1024, "HU"),
])
def test_restored_units_of_known_normalised_values(tmp_path: Path, target: str, value: float, expected: float, unit: str) -> None:
    plans = make_plans(modalities=("T1w", "T2w", "CT", "FDG-PET"))
    array = head_phantom((16, 20, 20), 0.0, 500.0, 150.0)
    write_case_image(tmp_path / "in" / "s_T1w.nii.gz", array)
    predictor = UniSynPredictor([ConstantNetwork(value)], conditioner(plans), plans, "2.5d", settings=SETTINGS)
    [out] = predictor.predict([tmp_path / "in"], tmp_path / "out", target)
    predicted, _ = read_image(out)
    head = array > 0
    np.testing.assert_allclose(predicted[head], expected, rtol=1e-5, atol=1e-3)
    assert json.loads(out.with_name(f"s_{target}.json").read_text())["unit"] == unit


def test_fold_ensemble_averages(tmp_path: Path) -> None:
    plans = make_plans()
    array = head_phantom((16, 20, 20), 0.0, 500.0, 150.0)
    write_case_image(tmp_path / "in" / "s_T1w.nii.gz", array)
    predictor = UniSynPredictor([ConstantNetwork(0.25), ConstantNetwork(0.75)], conditioner(plans), plans, "3d", settings=SETTINGS)
    [out] = predictor.predict([tmp_path / "in"], tmp_path / "out", "FDG-PET")
    np.testing.assert_allclose(read_image(out)[0][array > 0], 4.0, rtol=1e-5)


def test_existing_outputs_policy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_case_image(out / "a_CT.nii.gz", np.zeros((4, 5, 6), np.float32))
    (out / "a_CT.json").write_text(json.dumps({"image": image_record(out / "a_CT.nii.gz")}))
    (out / "b_CT.nii.gz").write_bytes(b"x")  # unfinished: no sidecar
    (out / "d_CT.nii.gz").write_bytes(b"x")  # a sidecar, but no whole image: a disk filled up while writing it
    (out / "d_CT.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--continue_prediction"):
        select_cases_to_run(["a", "b", "c"], out, "CT")
    assert select_cases_to_run(["a", "b", "c", "d"], out, "CT", continue_prediction=True) == ["b", "c", "d"]
    assert select_cases_to_run(["a", "b", "c"], out, "CT", overwrite=True) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="exclude"):
        select_cases_to_run(["a"], out, "CT", continue_prediction=True, overwrite=True)
