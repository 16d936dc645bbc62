"""Invertible normalisation: round trips, percentile mapping, parameter records and the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unisyn_v2.metadata.modalities import ModalityFamily
from unisyn_v2.preprocessing.normalization import (
    NORMALIZER_REGISTRY,
    CTBrainWindowNormalizer,
    CTNormalizer,
    MRINormalizer,
    NormalizationError,
    NormalizationParameters,
    PETNormalizer,
    build_normalizer,
    normalizer_for_family,
)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture()
def brain_mask() -> np.ndarray:
    mask = np.zeros((16, 20, 24), dtype=np.uint8)
    mask[3:13, 4:16, 5:19] = 1
    return mask


def test_ct_round_trip_inside_window_and_clip_outside(rng: np.random.Generator) -> None:
    norm = CTNormalizer()
    hu = rng.uniform(-1024, 3071, size=(8, 16, 16)).astype(np.float32)
    hu[0, 0, :4] = [-1024, 3071, 0, -1000]
    params = norm.fit(hu)
    out = norm.forward(hu, params)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(norm.inverse(out, params), hu, atol=0.5, rtol=0)
    np.testing.assert_allclose(norm.inverse(out, params), hu, atol=2e-3, rtol=0)  # exact up to float32
    outside = np.array([-3000.0, -1025.0, 3072.0, 10000.0], dtype=np.float32)
    np.testing.assert_allclose(norm.inverse(norm.forward(outside, params), params), [-1024, -1024, 3071, 3071])
    assert norm.default_target_parameters() == params and norm.output_unit(params) == "HU"


def test_ct_forward_maps_window_to_unit_interval() -> None:
    norm = CTNormalizer()
    params = norm.default_target_parameters()
    np.testing.assert_allclose(norm.forward(np.array([-1024.0, 3071.0]), params), [0.0, 1.0])
    with pytest.raises(NormalizationError, match="clip_high"):
        CTNormalizer(clip_low=100, clip_high=0)


def test_pet_suv_round_trip_exact(rng: np.random.Generator, brain_mask: np.ndarray) -> None:
    norm = PETNormalizer(dataset_scale=4.0)
    suv = rng.gamma(2.0, 1.5, size=brain_mask.shape).astype(np.float32)
    params = norm.fit(suv, brain_mask, unit="SUV")
    assert params.values["suvr"] == 0.0 and norm.output_unit(params) == "SUV"
    np.testing.assert_array_equal(norm.forward(suv, params), suv / np.float32(4.0))
    np.testing.assert_allclose(norm.inverse(norm.forward(suv, params), params), suv, rtol=1e-6)


@pytest.mark.parametrize("unit", ["Bq/ml", "SUVR", None])
def test_pet_other_units_become_suvr(rng: np.random.Generator, brain_mask: np.ndarray, unit: str | None) -> None:
    norm = PETNormalizer(dataset_scale=2.5)
    activity = rng.gamma(3.0, 2000.0, size=brain_mask.shape).astype(np.float32)
    params = norm.fit(activity, brain_mask, unit=unit)
    normalised = norm.forward(activity, params)
    brain_mean = float((normalised * 2.5)[brain_mask > 0].mean(dtype=np.float64))
    assert brain_mean == pytest.approx(1.0, rel=1e-5)
    assert params.values["brain_mean"] == pytest.approx(activity[brain_mask > 0].mean(dtype=np.float64), rel=1e-6)
    assert norm.output_unit(params) == "SUVR"
    suvr = norm.inverse(normalised, params)
    np.testing.assert_allclose(suvr * params.values["brain_mean"], activity, rtol=1e-5)


def test_pet_mean_without_mask_ignores_background(brain_mask: np.ndarray) -> None:
    image = np.full(brain_mask.shape, 3.0, dtype=np.float32)  # low scatter background
    image[brain_mask > 0] = 1000.0
    params = PETNormalizer(dataset_scale=1.0).fit(image, None, unit="Bq/ml")
    assert params.values["brain_mean"] == pytest.approx(1000.0)
    with pytest.raises(NormalizationError, match="brain mean"):
        PETNormalizer(dataset_scale=1.0).fit(np.zeros((4, 4, 4)), None)
    with pytest.raises(NormalizationError, match="dataset_scale"):
        PETNormalizer(dataset_scale=0.0)


def test_pet_default_target_parameters_follow_dataset_unit() -> None:
    assert PETNormalizer(3.0, unit="SUV").default_target_parameters().values["suvr"] == 0.0
    params = PETNormalizer(3.0).default_target_parameters()
    assert params.values == {"dataset_scale": 3.0, "brain_mean": 1.0, "suvr": 1.0}
    np.testing.assert_allclose(PETNormalizer(3.0).inverse(np.array([0.5]), params), [1.5])


def test_mri_percentiles_map_to_zero_and_one(rng: np.random.Generator, brain_mask: np.ndarray) -> None:
    image = rng.normal(400.0, 80.0, size=brain_mask.shape).astype(np.float32)
    image[brain_mask == 0] = 5000.0  # outside the mask: must not influence the fit
    norm = MRINormalizer()
    params = norm.fit(image, brain_mask)
    normalised = norm.forward(image, params)
    inside = normalised[brain_mask > 0]
    assert np.percentile(inside, 0.5) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(inside, 99.5) == pytest.approx(1.0, abs=1e-5)
    assert normalised.max() > 1.0  # no clipping above: the inverse stays exact
    np.testing.assert_allclose(norm.inverse(normalised, params), image, rtol=1e-5, atol=1e-3)


def test_mri_without_mask_uses_nonzero_voxels(brain_mask: np.ndarray) -> None:
    image = np.where(brain_mask > 0, np.linspace(1.0, 2.0, brain_mask.size).reshape(brain_mask.shape), 0.0)
    params = MRINormalizer(0.0, 100.0).fit(image, None)
    assert params.values["p_low"] == pytest.approx(image[brain_mask > 0].min())
    with pytest.raises(NormalizationError, match="coincide"):
        MRINormalizer().fit(np.ones((4, 4, 4)), None)
    with pytest.raises(NormalizationError, match="mask shape"):
        MRINormalizer().fit(np.ones((4, 4, 4)), np.ones((4, 4, 5)))
    with pytest.raises(NormalizationError, match="lower_percentile"):
        MRINormalizer(60.0, 40.0)


def test_mri_default_target_is_normalised_units_times_1000() -> None:
    norm = MRINormalizer()
    params = norm.default_target_parameters()
    np.testing.assert_allclose(norm.inverse(np.array([0.0, 1.0, 1.2]), params), [0.0, 1000.0, 1200.0])
    assert norm.output_unit(params) == "normalised MRI units"


def test_parameters_json_round_trip(brain_mask: np.ndarray) -> None:
    image = brain_mask.astype(np.float32) * np.arange(brain_mask.shape[-1], dtype=np.float32)
    for params in (
        MRINormalizer().fit(image, brain_mask),
        PETNormalizer(2.0).fit(image + 1, brain_mask),
        CTNormalizer().fit(image),
    ):
        restored = NormalizationParameters.from_dict(json.loads(json.dumps(params.to_dict())))
        assert restored == params
    with pytest.raises(NormalizationError, match="scheme"):
        NormalizationParameters.from_dict({"values": {}})
    with pytest.raises(NormalizationError, match="values"):
        NormalizationParameters.from_dict({"scheme": "ct_window", "values": {"clip_low": "low"}})


def test_wrong_scheme_and_missing_values_are_rejected() -> None:
    ct_params = CTNormalizer().default_target_parameters()
    with pytest.raises(NormalizationError, match="mri_percentile"):
        MRINormalizer().forward(np.zeros(3), ct_params)
    with pytest.raises(NormalizationError, match="lack 'clip_high'"):
        CTNormalizer().forward(np.zeros(3), NormalizationParameters("ct_window", {"clip_low": -1024.0}))


def test_registry_and_family_defaults() -> None:
    assert set(NORMALIZER_REGISTRY) == {"ct_brain_window", "ct_window", "pet_suv", "mri_percentile"}
    assert isinstance(normalizer_for_family(ModalityFamily.CT), CTBrainWindowNormalizer)
    assert isinstance(normalizer_for_family("mri"), MRINormalizer)
    pet = normalizer_for_family(ModalityFamily.PET, dataset_scale=2.0)
    assert isinstance(pet, PETNormalizer) and pet.dataset_scale == 2.0
    rebuilt = build_normalizer(pet.scheme, pet.init_kwargs())
    assert rebuilt.init_kwargs() == pet.init_kwargs()
    with pytest.raises(NormalizationError, match="known schemes: ct_brain_window, ct_window, mri_percentile, pet_suv"):
        build_normalizer("zscore", {})
    with pytest.raises(NormalizationError, match="dataset_scale"):
        build_normalizer("pet_suv", {})
    with pytest.raises(NormalizationError, match="known families"):
        normalizer_for_family("US")


def test_ct_brain_window_is_monotone_exactly_invertible_and_resolves_the_brain() -> None:
    norm = CTBrainWindowNormalizer(window_low=-10.0, window_high=70.0)
    params = norm.fit(np.zeros(3))
    hu = np.linspace(-1024.0, 3071.0, 40961).astype(np.float32)
    normalised = norm.forward(hu, params)
    assert np.all(np.diff(normalised) > 0)
    assert normalised[0] == -1.0 and normalised[-1] == 2.0
    np.testing.assert_allclose(norm.inverse(normalised, params), hu, atol=2e-3 * 3071)
    brain = norm.forward(np.array([-10.0, 30.0, 40.0, 70.0], np.float32), params)
    np.testing.assert_allclose(brain, [0.0, 0.5, 0.625, 1.0], atol=1e-6)
    # grey/white contrast (10 HU) is 1/8 of the scale, against 1/410 under the linear 12-bit window
    linear = CTNormalizer()
    contrast = np.diff(linear.forward(np.array([30.0, 40.0], np.float32), linear.fit(np.zeros(3))))[0]
    assert brain[2] - brain[1] > 50 * contrast
    # outside the storage range: clipped both ways, as the linear window
    assert norm.forward(np.array([-3000.0, 9000.0]), params).tolist() == [-1.0, 2.0]
    assert norm.inverse(np.array([-5.0, 7.0]), params).tolist() == [-1024.0, 3071.0]
    assert norm.output_unit(params) == "HU"


def test_ct_brain_window_rejects_unordered_knots() -> None:
    with pytest.raises(NormalizationError, match="window_low < window_high"):
        CTBrainWindowNormalizer(window_low=50.0, window_high=10.0)
    bad = NormalizationParameters("ct_brain_window", {"clip_low": -1024.0, "window_low": 80.0, "window_high": 20.0,
                                                      "clip_high": 3071.0})
    with pytest.raises(NormalizationError, match="not increasing"):
        CTBrainWindowNormalizer().forward(np.zeros(3), bad)
