"""Cropping boxes and resampling: shape rules, grid alignment, separate-z and label preservation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unisyn_v2.preprocessing.cropping import (
    CroppingError,
    EmptyForegroundError,
    bbox_from_list,
    bbox_to_list,
    crop_to_bbox,
    foreground_bbox,
    uncrop,
)
from unisyn_v2.preprocessing.resampling import (
    ResamplingError,
    compute_new_shape,
    determine_separate_z,
    resample_image,
    resample_mask,
    resample_to_shape,
)


def _smooth_field(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    return (np.sin(2 * z) + np.cos(3 * y) * x + 0.5 * x**2).astype(np.float32)


def test_bbox_is_union_over_images_with_margin() -> None:
    a = np.zeros((10, 12, 14), dtype=np.float32)
    b = np.zeros((10, 12, 14), dtype=np.uint8)
    a[2:4, 3:5, 6:8] = 1.0
    b[5:7, 8:9, 1:2] = 1
    assert bbox_to_list(foreground_bbox([a, b])) == [[2, 7], [3, 9], [1, 8]]
    assert bbox_to_list(foreground_bbox([a, b], margin=3)) == [[0, 10], [0, 12], [0, 11]]
    stacked = np.stack([a, b.astype(np.float32)])  # (C, Z, Y, X) counts every channel
    assert foreground_bbox([stacked]) == foreground_bbox([a, b])


def test_bbox_errors() -> None:
    with pytest.raises(EmptyForegroundError, match="foreground is empty"):
        foreground_bbox([np.zeros((4, 4, 4)), np.full((4, 4, 4), np.nan)])
    with pytest.raises(CroppingError, match="share one"):
        foreground_bbox([np.ones((4, 4, 4)), np.ones((4, 4, 5))])
    with pytest.raises(CroppingError, match="margin"):
        foreground_bbox([np.ones((4, 4, 4))], margin=-1)
    with pytest.raises(CroppingError, match="outside"):
        crop_to_bbox(np.ones((4, 4, 4)), (slice(0, 5), slice(0, 4), slice(0, 4)))


def test_uncrop_of_crop_restores_box_and_fills_elsewhere() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 10, 11)).astype(np.float32)
    bbox = (slice(2, 7), slice(1, 10), slice(3, 6))
    cropped = crop_to_bbox(x, bbox)
    assert cropped.shape == (2, 5, 9, 3)
    restored = uncrop(cropped, bbox, x.shape[-3:], fill_value=-1000.0)
    assert restored.shape == x.shape and restored.dtype == x.dtype
    np.testing.assert_array_equal(restored[(Ellipsis, *bbox)], x[(Ellipsis, *bbox)])
    outside = np.ones(x.shape, dtype=bool)
    outside[(Ellipsis, *bbox)] = False
    assert np.all(restored[outside] == -1000.0)
    with pytest.raises(CroppingError, match="does not match"):
        uncrop(cropped[:, :-1], bbox, x.shape[-3:])


def test_bbox_json_round_trip() -> None:
    bbox = (slice(1, 5), slice(0, 7), slice(2, 3))
    assert bbox_from_list(json.loads(json.dumps(bbox_to_list(bbox)))) == bbox
    with pytest.raises(CroppingError, match="start < stop"):
        bbox_from_list([[3, 1], [0, 2], [0, 2]])
    with pytest.raises(CroppingError):
        bbox_from_list([[0, 1], [0, 2]])


def test_compute_new_shape_rules() -> None:
    assert compute_new_shape((100, 200, 200), (1.0, 1.0, 1.0), (1.5, 1.5, 1.5)) == (67, 133, 133)
    assert compute_new_shape((20, 256, 256), (5.0, 0.5, 0.5), (1.0, 1.0, 1.0)) == (100, 128, 128)
    assert compute_new_shape((1, 4, 4), (1.0, 1.0, 1.0), (10.0, 1.0, 1.0)) == (1, 4, 4)
    with pytest.raises(ResamplingError, match="old_spacing"):
        compute_new_shape((4, 4, 4), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0))


def test_identity_resample_is_a_float32_copy() -> None:
    image = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    out = resample_image(image, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), order=3)
    assert out.dtype == np.float32 and not np.shares_memory(out, image)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_output_shape_is_exactly_requested(order: int) -> None:
    image = _smooth_field((7, 11, 13))
    for shape in [(5, 17, 9), (14, 11, 26), (1, 3, 2)]:
        out = resample_image(image, (1.0, 1.0, 1.0), new_shape=shape, order=order)
        assert out.shape == shape and out.dtype == np.float32
    out = resample_image(np.stack([image, image]), (1.0, 1.0, 1.0), new_spacing_zyx=(0.5, 2.0, 1.0), order=order)
    assert out.shape == (2, 14, 6, 13)


@pytest.mark.parametrize("order", [1, 3])
def test_up_then_down_sampling_of_smooth_field_is_close(order: int) -> None:
    image = _smooth_field((24, 28, 32))
    up = resample_image(image, (2.0, 2.0, 2.0), (1.0, 1.0, 1.0), order=order)
    assert up.shape == (48, 56, 64)
    down = resample_image(up, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), order=order)
    assert down.shape == image.shape
    assert np.abs(down - image)[2:-2, 2:-2, 2:-2].max() < 0.02
    assert np.abs(down - image).mean() < 0.01


def test_linear_backend_matches_half_voxel_grid() -> None:
    line = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32).reshape(1, 1, 4)
    out = resample_to_shape(line, (1, 1, 8), order=1)
    # voxel centres at (i + 0.5) / 2 - 0.5 in input index units, edges replicated
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0], atol=1e-6)
    np.testing.assert_array_equal(resample_to_shape(line, (1, 1, 2), order=0)[0, 0], [1.0, 3.0])


def test_separate_z_decision() -> None:
    assert determine_separate_z((5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0
    assert determine_separate_z((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2
    assert determine_separate_z((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None
    assert determine_separate_z((3.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None  # ratio must exceed 3
    assert determine_separate_z((5.0, 5.0, 1.0), (1.0, 1.0, 1.0)) is None  # two axes tie
    with pytest.raises(ResamplingError, match="separate_z=True"):
        resample_image(np.ones((4, 4, 4)), (1.0, 1.0, 1.0), new_shape=(8, 8, 8), separate_z=True)


def test_separate_z_uses_nearest_through_plane() -> None:
    slices = np.stack([np.full((6, 6), float(k)) for k in range(4)]).astype(np.float32)
    out = resample_image(slices, (5.0, 1.0, 1.0), (2.5, 0.5, 0.5), order=3)
    assert out.shape == (8, 12, 12)
    # thick slices are repeated, never blended: every output slice is one constant input slice
    np.testing.assert_allclose(out[:, 0, 0], [0, 0, 1, 1, 2, 2, 3, 3], atol=1e-5)
    blended = resample_image(slices, (5.0, 1.0, 1.0), (2.5, 0.5, 0.5), order=1, separate_z=False)
    assert not np.allclose(blended[1, 0, 0], 0.0)


def test_mask_resampling_keeps_labels() -> None:
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:8, 3:9, 4:11] = True
    up = resample_mask(mask, (20, 30, 35))
    assert up.dtype == np.uint8 and up.shape == (20, 30, 35) and set(np.unique(up)) == {0, 1}
    np.testing.assert_array_equal(resample_mask(up, (10, 12, 14)), mask.astype(np.uint8))
    labels = np.random.default_rng(0).integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    assert set(np.unique(resample_mask(labels, (9, 3, 11)))) <= {0, 1, 2, 3}
    with pytest.raises(ResamplingError, match="0..255"):
        resample_mask(np.full((2, 2, 2), 300), (3, 3, 3))


def test_cubic_is_scipys_spline() -> None:
    """Order 3 (the plans' image order since issue 21) is scipy's cubic spline, as matrix products (about 20x
    faster on one core: a benchmark's number, BENCHMARKS.md "Preprocessing vs nnU-Net v2 at 1 mm", not a test's)."""
    from scipy.ndimage import gaussian_filter, zoom

    volume = gaussian_filter(np.random.default_rng(0).random((80, 96, 88)).astype(np.float32), 2)
    shape = (88, 104, 72)
    ours = resample_image(volume[None], (1.1, 1.0, 1.2), new_shape=shape, order=3)[0]
    reference = zoom(volume, [n / s for n, s in zip(shape, volume.shape)], order=3, mode="nearest", grid_mode=True,
                     output=np.float32)
    interior = (slice(4, -4),) * 3
    assert np.abs(ours - reference)[interior].max() < 1e-5 * np.ptp(volume)
    assert np.abs(ours - reference).max() < 0.05 * np.ptp(volume)  # edges: replicated, not scipy's own boundary
