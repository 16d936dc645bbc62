"""Anatomy of the phantom head (issue 17, item 5): each brain-like property, measured, against a head
without it where the property is new or could silently vanish."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage, stats

from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.phantom import anatomy as anatomy_module
from unisyn_v2.phantom import brain_mask, draw_subject, simulate_image, simulate_subject

SHAPE = (48, 48, 48)
VOXEL = (4.0, 4.0, 4.0)
OFF = {"noise": False, "bias": False, "blur": False}
CT = ImageMetadata(kvp=120.0, voxel_size=VOXEL)


def head(seed: int, age: float = 50.0, **options) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return simulate_subject(rng, SHAPE, VOXEL, subject=draw_subject(rng, age=age), **options)


def head_hull(ct: np.ndarray) -> np.ndarray:
    """Everything enclosed by the head's outline (cavities included)."""
    return ndimage.binary_fill_holes(ndimage.binary_closing(ct > -500.0, iterations=2))


@pytest.mark.parametrize("seed", [1, 2])
def test_air_sinuses_on_ct_and_dark_on_mri(seed: int) -> None:
    with_sinuses, without = head(seed), head(seed, sinuses=False)
    subject = draw_subject(None)
    ct = simulate_image("CT", with_sinuses, CT, subject, np.random.default_rng(0), **OFF)
    ct_plain = simulate_image("CT", without, CT, subject, np.random.default_rng(0), **OFF)
    cells = head_hull(ct) & (ct < -900.0)
    assert cells.sum() >= 3, "air cells below the brain at about -1000 HU"
    assert not (head_hull(ct_plain) & (ct_plain < -900.0)).any()  # the plain head has none
    z_cells = np.nonzero(cells)[0].mean()
    z_brain = np.nonzero(brain_mask(with_sinuses))[0].mean()
    assert z_cells < z_brain  # skull base, below the brain
    t1 = simulate_image("T1w", with_sinuses, ImageMetadata(field_strength=3.0, voxel_size=VOXEL), subject,
                        np.random.default_rng(0), **OFF)
    assert t1[cells].mean() < 0.1 * t1[brain_mask(with_sinuses) > 0].mean()  # no MR signal in air
    # the brain keeps its tissue classes, only pushed up over the skull base
    for t in ("gm", "wm", "csf"):
        assert abs(with_sinuses[t].sum() - without[t].sum()) < 0.1 * without[t].sum(), t


def test_skull_cortical_tables_and_diploe() -> None:
    tissues = head(3)
    ct = simulate_image("CT", tissues, CT, draw_subject(None), np.random.default_rng(0), **OFF)
    cortical = tissues["bone"] >= 0.6
    diploe = tissues["marrow"] >= 0.5
    assert cortical.sum() > 50 and diploe.sum() > 5
    assert ct[cortical].mean() > 600.0
    assert 200.0 < ct[diploe].mean() < ct[cortical].mean()  # cancellous bone between the tables
    scalp = (tissues["fat"] + tissues["muscle"]) >= 0.5
    assert scalp.sum() > 50 and -120.0 < ct[scalp].mean() < 60.0


def _surface_area(mask: np.ndarray) -> int:
    """Faces between a mask voxel and a non-mask neighbour (a voxel surface area)."""
    return int(sum(np.count_nonzero(np.diff(mask.astype(np.int8), axis=a)) for a in range(3)))


def test_folding_enlarges_the_cortical_surface(monkeypatch: pytest.MonkeyPatch) -> None:
    parenchyma = ("gm", "mtl", "deep_gm", "wm", "lesion")
    folded = sum(head(4)[t] for t in parenchyma) >= 0.5
    draw = anatomy_module._draw_anatomy
    monkeypatch.setattr(anatomy_module, "_draw_anatomy",
                        lambda *a, **k: dataclasses.replace(draw(*a, **k), sulcal_depth=0.0))
    smooth = sum(head(4)[t] for t in parenchyma) >= 0.5
    assert _surface_area(folded) > 1.3 * _surface_area(smooth)


def test_partial_volume_at_every_border() -> None:
    tissues = head(5)
    for a, b in (("gm", "wm"), ("csf", "gm"), ("bone", "marrow"), ("fat", "air")):
        mixed = (tissues[a] > 0.1) & (tissues[b] > 0.1)
        assert mixed.sum() > 20, (a, b)


def test_head_shape_varies_between_subjects() -> None:
    extents = []
    for seed in range(6):
        occupied = np.argwhere(head(seed)["air"] < 0.5)
        extents.append((occupied.max(0) - occupied.min(0)) * VOXEL[0])
    assert np.asarray(extents).std(0).max() > 2.0  # mm


def test_ventricles_grow_with_age() -> None:
    ages = np.linspace(22.0, 88.0, 8)
    volumes = []
    for seed, age in enumerate(ages):
        tissues = head(100 + seed, age=float(age))
        deep = ndimage.distance_transform_edt(brain_mask(tissues), sampling=VOXEL) > 20.0  # away from the sulci
        volumes.append(float(tissues["csf"][deep].sum()))
    rho = stats.spearmanr(ages, volumes)[0]
    assert rho > 0.7, (rho, volumes)
    assert volumes[-1] > 1.5 * volumes[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_brain_mask_never_holds_skull_or_air(seed: int) -> None:
    """Closing bridged the brain mask onto the thickened skull base of the sinuses (29 voxels above 150 HU per
    demo brain), and those bone voxels dominated the brain-range PSNR of every synthetic CT."""
    tissues = head(seed)
    extracerebral = sum(tissues[t] for t in anatomy_module.EXTRACEREBRAL_TISSUES)
    mask = brain_mask(tissues) > 0
    assert mask.sum() > 1000 and extracerebral[mask].max() < 0.5
    assert (brain_mask(tissues, exclude_extracerebral=False) > 0).sum() >= mask.sum()  # the former rule (older phantoms)
