"""Synthesised images stay inside physics (issue 17): CT >= -1024 HU, MRI and PET >= 0, air/zero outside the
head; the head mask survives an MRI whose skull is dark and whose field of view cuts the head open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.dataset.image_io import Geometry, read_image
from unisyn_v2.preprocessing.case_preprocessor import restore_prediction
from unisyn_v2.preprocessing.case_store import load_preprocessed_case
from unisyn_v2.preprocessing.foreground import case_foreground, otsu_threshold

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "real_mni2mm"


def _head_phantom(shape: tuple[int, int, int] = (40, 48, 48)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A T1w-like head: bright scalp, dark skull, brain; cut open at the bottom (z = 0). Returns (t1, head, skull)."""
    z, y, x = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    r = np.sqrt((z + 8) ** 2 + y**2 + x**2)  # centre below the middle: the lowest slices cut the head
    head = r < 22
    skull = (r >= 17) & (r < 20)
    brain = r < 17
    rng = np.random.default_rng(0)
    t1 = np.where(brain, 600.0, 0.0) + np.where((r >= 20) & head, 800.0, 0.0) + np.where(skull, 30.0, 0.0)
    t1 = t1 + np.abs(rng.normal(0, 20, shape))  # Rician-like background noise
    return t1.astype(np.float32), head, skull


def test_head_mask_keeps_a_dark_skull_when_the_head_is_cut_open() -> None:
    t1, head, skull = _head_phantom()
    assert head[0].any()  # the field of view cuts the head: a 3D fill alone cannot close it
    found = case_foreground([t1], ["T1w"])
    assert found[skull].mean() > 0.99, "the dark skull must be inside the head"
    assert (found & ~head).sum() < 0.02 * head.sum(), "background noise must stay outside"


def test_otsu_separates_two_classes() -> None:
    values = np.concatenate([np.full(1000, 10.0), np.full(1000, 100.0)])
    assert 10.0 < otsu_threshold(values) < 100.0


@pytest.mark.skipif(not (SHARED / "T1w_icbm152avg.nii.gz").is_file(), reason="../shared real templates absent")
def test_head_mask_of_the_real_t1w_template_matches_the_ct_template_head() -> None:
    t1, _ = read_image(SHARED / "T1w_icbm152avg.nii.gz")
    ct, _ = read_image(SHARED / "CT_rorden30_HU.nii.gz")
    mri_head, ct_head = case_foreground([t1], ["T1w"]), case_foreground([ct], ["CT"])
    dice = 2 * (mri_head & ct_head).sum() / (mri_head.sum() + ct_head.sum())
    assert dice > 0.9  # the former 5 % rule took 90 % of the volume (the 8-bit background) as head: dice 0.79
    assert (mri_head & (ct > 300)).sum() / (ct > 300).sum() > 0.99  # the skull is inside


def _properties(shape: tuple[int, int, int]) -> dict:
    return {"channels": [], "shape_after_crop_zyx": list(shape), "target_spacing_zyx": [1.0, 1.0, 1.0],
            "bbox_zyx": [[0, shape[0]], [0, shape[1]], [0, shape[2]]],
            "original_geometry": Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)).to_dict()}


@pytest.mark.parametrize("modality, floor, background", [("CT", -1024.0, -1000.0), ("FDG-PET", 0.0, 0.0),
                                                          ("T1w", 0.0, 0.0)])
def test_restored_predictions_respect_the_physical_floor_and_the_head(modality: str, floor: float, background: float) -> None:
    from training_fixtures import tiny_plans

    plans = tiny_plans()  # T1w, CT and FDG-PET
    shape = (6, 8, 8)
    properties = _properties(shape)
    prediction = np.full(shape, -5.0, np.float32)  # far below anything physical on every scale
    prediction[3, 4, 4] = 0.5
    restored, _unit = restore_prediction(prediction, properties, plans, modality)
    assert restored.min() >= floor
    head = np.zeros(shape, bool)
    head[2:5, 3:6, 3:6] = True
    masked, _ = restore_prediction(prediction, properties, plans, modality, head_mask=head)
    assert np.all(masked[~head] == background) and np.array_equal(masked[head], restored[head])
    with pytest.raises(ValueError, match="head mask shape"):
        restore_prediction(prediction, properties, plans, modality, head_mask=head[:-1])


def test_preprocessing_writes_the_head_mask(unisyn_dirs: dict[str, Path]) -> None:
    from raw_fixtures import write_blob_dataset
    from unisyn_v2.experiment_planning import api

    write_blob_dataset(unisyn_dirs["raw"] / "Dataset002_Blob", num_cases=3)
    api.plan_and_preprocess(2, num_processes=1, progress=False)
    folder = unisyn_dirs["preprocessed"] / "Dataset002_Blob" / "unisynPlans_data"
    case = load_preprocessed_case(folder, "case_000")
    assert case.head is not None and case.head.shape == case.mask.shape
    assert (case.head >= case.mask).all() and case.head.sum() >= case.mask.sum()
