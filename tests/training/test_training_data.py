"""Stage-2 data pipeline: pair sampler, patches, augmentation, batch builder and loader."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from training_fixtures import MODALITIES, write_training_dataset
from unisyn_v2.training.data.augmentation import (
    NO_AUGMENTATION, AugmentationParams, SpatialSample, augment_intensity, extract_patch, sample_spatial,
)
from unisyn_v2.training.data.cases import CaseCollection
from unisyn_v2.training.data.loader import BatchBuilder, PatchLoader
from unisyn_v2.training.data.pair_sampler import PairSampler
from unisyn_v2.training.data.patches import choose_patch_start, crop_padded, foreground_fraction
from unisyn_v2.training.settings import parse_task_filter

CASES = {"a": ("T1w", "CT", "FDG-PET"), "b": ("T1w", "CT"), "c": ("FDG-PET",)}
ALL_PAIRS = {(s, t) for s in MODALITIES for t in MODALITIES if s != t}


def test_pair_sampler_draws_every_direction_and_never_the_same_image() -> None:
    sampler = PairSampler(CASES, seed=0)
    draws = [sampler.sample() for _ in range(600)]
    assert {(d.source_modality, d.target_modality) for d in draws} == ALL_PAIRS
    assert all(d.source_channel != d.target_channel for d in draws)
    assert {d.case_id for d in draws} == {"a", "b"}  # a single-modality case has no pair
    assert set(sampler.tasks()) == ALL_PAIRS
    for d in draws:
        assert CASES[d.case_id][d.source_channel] == d.source_modality
        assert CASES[d.case_id][d.target_channel] == d.target_modality


def test_pair_sampler_task_filter() -> None:
    sampler = PairSampler(CASES, tasks=parse_task_filter("T1w->CT"), seed=1)
    draws = [sampler.sample() for _ in range(100)]
    assert {d.task for d in draws} == {"T1w->CT"}
    assert {d.case_id for d in draws} == {"a", "b"}
    only_a = PairSampler(CASES, tasks=[("CT", "FDG-PET")], seed=1)
    assert {only_a.sample().case_id for _ in range(20)} == {"a"}
    with pytest.raises(ValueError, match="T1w->CT"):
        PairSampler(CASES, tasks=[("T2w", "CT")])


def test_pair_sampler_is_deterministic_and_restores_its_state() -> None:
    first, second = PairSampler(CASES, seed=7), PairSampler(CASES, seed=7)
    assert [first.sample() for _ in range(50)] == [second.sample() for _ in range(50)]
    state = first.state_dict()
    expected = [first.sample() for _ in range(20)]
    first.load_state_dict(state)
    assert [first.sample() for _ in range(20)] == expected
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert [first.sample(rng_a) for _ in range(10)] == [second.sample(rng_b) for _ in range(10)]


def test_task_filter_parsing() -> None:
    assert parse_task_filter(" T1w->CT, CT->FDG-PET ") == (("T1w", "CT"), ("CT", "FDG-PET"))
    assert parse_task_filter(None) is None
    assert parse_task_filter("T2w->T2w") == (("T2w", "T2w"),)  # one modality at two protocols
    for bad in ("T1w", "->CT", "T1w->"):
        with pytest.raises(ValueError):
            parse_task_filter(bad)


def _smooth_volume(seed: int = 0, shape: tuple[int, int, int] = (12, 40, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float32)


def test_crop_padded_pads_outside_the_volume() -> None:
    volume = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    crop = crop_padded(volume, (-1, 1, 2), (3, 3, 3))
    assert crop.shape == (3, 3, 3)
    assert np.all(crop[0] == 0) and np.all(crop[:, 2:] == 0) and np.all(crop[:, :, 1:] == 0)
    assert np.array_equal(crop[1:, :2, 0], volume[:2, 1:, 2])


@pytest.mark.parametrize("is_slab", [True, False])
def test_spatial_augmentation_is_identical_for_source_and_target(is_slab: bool) -> None:
    volume = _smooth_volume()
    params = AugmentationParams(p_rotation=1.0, p_scale=1.0, p_mirror=1.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        spatial = sample_spatial(rng, params, is_slab)
        assert spatial.matrix is not None and spatial.flip_axes == (2,)
        if is_slab:  # in-plane only: z is untouched
            assert np.allclose(spatial.matrix[0], [1, 0, 0]) and np.allclose(spatial.matrix[:, 0], [1, 0, 0])
        patch = extract_patch([volume, volume.copy()], (2, 5, 7), (4, 24, 24), spatial)
        assert patch.shape == (2, 4, 24, 24)
        assert np.array_equal(patch[0], patch[1])
        assert not np.array_equal(patch[0], crop_padded(volume, (2, 5, 7), (4, 24, 24)))


def test_identity_transform_equals_a_plain_crop_and_mirroring_flips_x() -> None:
    volume = _smooth_volume(1)
    plain = crop_padded(volume, (1, 3, 4), (4, 16, 16))
    warped = extract_patch([volume], (1, 3, 4), (4, 16, 16), SpatialSample(np.eye(3), ()))
    assert np.allclose(warped[0], plain, atol=1e-5)
    flipped = extract_patch([volume], (1, 3, 4), (4, 16, 16), SpatialSample(None, (2,)))
    assert np.array_equal(flipped[0], plain[:, :, ::-1])


def test_intensity_augmentation_returns_a_new_changed_array() -> None:
    source = np.abs(_smooth_volume(2, (4, 16, 16))) + 0.1
    params = AugmentationParams(p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_gamma=1)
    out = augment_intensity(source, np.random.default_rng(0), params, is_slab=True)
    assert out.shape == source.shape and out.dtype == np.float32 and not np.allclose(out, source)
    assert np.array_equal(augment_intensity(source, np.random.default_rng(0), NO_AUGMENTATION, True), source)


def test_foreground_under_sampling() -> None:
    mask = np.zeros((8, 64, 64), np.uint8)
    mask[:, :12, :12] = 1  # brain only in one corner
    size = (4, 16, 16)

    def fractions(fraction_min: float) -> np.ndarray:
        rng = np.random.default_rng(0)
        return np.array([foreground_fraction(mask, choose_patch_start(mask, size, rng, fraction_min, 0.0), size)
                         for _ in range(200)])

    uniform, guided = fractions(0.0), fractions(0.25)
    assert (uniform < 0.25).mean() > 0.7
    assert guided.mean() > 2 * uniform.mean()
    assert (guided > 0).all()  # with keep probability 0 every patch holds brain
    # a volume smaller than the patch is centred and padded
    start = choose_patch_start(np.ones((2, 8, 8), np.uint8), (4, 16, 16), np.random.default_rng(0))
    assert start.tolist() == [-1, -4, -4]


@pytest.fixture(scope="module")
def toy_cases(tmp_path_factory: pytest.TempPathFactory) -> CaseCollection:
    folder, plans = write_training_dataset(tmp_path_factory.mktemp("pre"), num_cases=3)
    data = folder / plans.configuration().data_identifier
    return CaseCollection(data, ["case_000", "case_001", "case_002"])


def _same_image_cases(toy_cases: CaseCollection, tmp_path: Path) -> CaseCollection:
    """A copy of case_000 whose CT channel is its T1w image (so target == source)."""
    from unisyn_v2.preprocessing.case_store import load_preprocessed_case, save_preprocessed_case

    case = load_preprocessed_case(toy_cases.folder, "case_000", mmap=False)
    case.data = case.data.copy()
    case.data[1] = case.data[0]
    save_preprocessed_case(tmp_path, case)
    return CaseCollection(tmp_path, ["case_000"])


def test_batch_builder_augments_source_and_target_identically(toy_cases: CaseCollection, tmp_path: Path) -> None:
    cases = _same_image_cases(toy_cases, tmp_path)
    sampler = PairSampler(cases.case_modalities(), tasks=[("T1w", "CT")])
    spatial_only = replace(NO_AUGMENTATION, p_rotation=1.0, p_scale=1.0, p_mirror=1.0)
    builder = BatchBuilder(cases, sampler, (4, 16, 16), 4, True, seed=0, augmentation=spatial_only)
    batch = builder.make_batch(0)
    assert batch["source"].shape == (4, 1, 4, 16, 16)
    assert np.array_equal(batch["source"], batch["target"])
    assert batch["tasks"] == ["T1w->CT"] * 4
    assert [d.modality for d in batch["target_descriptions"]] == ["CT"] * 4
    everything = AugmentationParams(p_rotation=1.0, p_scale=1.0, p_mirror=1.0, p_noise=1.0, p_brightness=1.0)
    batch = BatchBuilder(cases, sampler, (4, 16, 16), 4, True, seed=0, augmentation=everything).make_batch(0)
    assert np.array_equal(batch["source_clean"], batch["target"])  # the spatial part is shared ...
    assert not np.allclose(batch["source"], batch["target"])  # ... the intensity part touches the source only


def test_batches_are_a_function_of_the_index_for_any_number_of_workers(toy_cases: CaseCollection) -> None:
    sampler = PairSampler(toy_cases.case_modalities(), seed=0)
    builder = BatchBuilder(toy_cases, sampler, (4, 16, 16), 2, True, seed=5, augmentation=AugmentationParams())
    serial = PatchLoader(builder, num_workers=0)
    parallel = PatchLoader(builder, num_workers=2)
    try:
        a = [b for _, b in zip(range(5), serial)]
        b = [b for _, b in zip(range(5), parallel)]
    finally:
        parallel.close()
    for x, y in zip(a, b):
        assert x["index"] == y["index"] and x["case_ids"] == y["case_ids"] and x["tasks"] == y["tasks"]
        assert np.array_equal(x["source"], y["source"]) and np.array_equal(x["target"], y["target"])
    assert serial.state_dict() == {"next_index": 5}
    resumed = PatchLoader(builder, num_workers=0)
    resumed.load_state_dict({"next_index": 3})
    assert np.array_equal(next(iter(resumed))["source"], a[3]["source"])
    assert resumed.state_dict() == {"next_index": 4}
    validation = PatchLoader(builder, num_batches=2, restart_each_iteration=True)
    first, again = [v["index"] for v in validation], [v["index"] for v in validation]
    assert first == again == [0, 1]
