"""Thick-slice acquisition: a slice profile along one axis, then sampling at the slice centres.

A clinical 2D sequence with 4 mm slices does not sample the 1 mm anatomy every 4 mm; each slice integrates
the signal under its slice profile. Two profiles are offered, both as a matrix that maps the fine grid's
voxels along the axis to the thick slices (rows sum to 1, truncated at the volume's ends):

- ``gaussian``: a Gaussian whose full width at half maximum is the slice thickness (an RF pulse's profile is
  close to it). The fine grid already has a profile of about one voxel, so the Gaussian added has
  sigma = sqrt(thickness^2 - 1) / 2.3548 fine voxels: thickness 1 voxel leaves the image unchanged.
- ``rect``: an ideal boxcar of the slice thickness, integrated exactly over the fine voxels it overlaps.

Slice centres sit at the half-voxel convention of the rest of the pipeline: thick slice i of n covering
n_in fine voxels is centred at ``(i + 0.5) * n_in / n - 0.5`` fine voxels, so both grids span the same box.
The same matrices degrade training patches for the implicit (LIIF) decoder (``training.liif_training``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

PROFILES = ("gaussian", "rect")
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # 1 / 2.3548
THICK_SLICE_FOLDER = "thick_slice"


def profile_matrix(n_in: int, n_out: int, thickness: float, profile: str = "gaussian") -> np.ndarray:
    """(n_out, n_in) float64 weights: thick slice i as a weighted sum of fine voxels (``thickness`` in fine voxels)."""
    if profile not in PROFILES:
        raise ValueError(f"slice profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if n_in < 1 or n_out < 1 or not thickness > 0:
        raise ValueError(f"need n_in, n_out >= 1 and thickness > 0, got {n_in}, {n_out}, {thickness}")
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    fine = np.arange(n_in, dtype=np.float64)
    if profile == "rect":
        low, high = centres[:, None] - thickness / 2.0, centres[:, None] + thickness / 2.0
        weights = np.clip(np.minimum(high, fine + 0.5) - np.maximum(low, fine - 0.5), 0.0, None)
    else:
        sigma = math.sqrt(max(thickness**2 - 1.0, 0.0)) * FWHM_TO_SIGMA
        if sigma < 1e-3:  # no extra blur: linear interpolation at the centres
            weights = np.clip(1.0 - np.abs(fine[None, :] - centres[:, None]), 0.0, None)
        else:
            weights = np.exp(-0.5 * ((fine[None, :] - centres[:, None]) / sigma) ** 2)
    sums = weights.sum(axis=1, keepdims=True)
    empty = sums[:, 0] <= 0
    if empty.any():  # a centre beyond the last voxel (cannot happen on the half-voxel grid; kept safe)
        nearest = np.clip(np.round(centres[empty]).astype(int), 0, n_in - 1)
        weights[empty] = 0.0
        weights[empty, nearest] = 1.0
        sums = weights.sum(axis=1, keepdims=True)
    return weights / sums


def thick_slice_shape(n_in: int, spacing_in: float, slice_spacing: float) -> int:
    """Thick slices that cover the same extent: round(n_in * spacing_in / slice_spacing), at least 1."""
    return max(1, int(round(n_in * spacing_in / slice_spacing)))


def render_thick_slices(volume: np.ndarray, spacing_zyx: Sequence[float], thickness_mm: float,
                        slice_spacing_mm: float | None = None, axis: int = 0,
                        profile: str = "gaussian") -> tuple[np.ndarray, tuple[float, float, float]]:
    """Acquire ``volume`` (Z, Y, X) with slices ``thickness_mm`` thick every ``slice_spacing_mm`` (default: the
    thickness, contiguous slices) along ``axis``; returns (float32 thick-slice volume, its spacing (z, y, x)).

    The slice centres span the input's box (same first-voxel edge and extent up to rounding of the count)."""
    spacing = [float(s) for s in spacing_zyx]
    step = float(slice_spacing_mm or thickness_mm)
    if not thickness_mm > 0 or not step > 0:
        raise ValueError(f"slice thickness and spacing must be positive, got {thickness_mm}, {step}")
    n_in = volume.shape[axis]
    n_out = thick_slice_shape(n_in, spacing[axis], step)
    matrix = profile_matrix(n_in, n_out, thickness_mm / spacing[axis], profile)
    moved = np.moveaxis(np.asarray(volume, dtype=np.float64), axis, 0)
    out = np.tensordot(matrix, moved, axes=(1, 0))
    spacing[axis] = n_in * spacing[axis] / n_out
    return np.moveaxis(out, 0, axis).astype(np.float32), (spacing[0], spacing[1], spacing[2])


def write_thick_slice_dataset(dataset_dir: Path, thickness_mm: float, slice_spacing_mm: float | None = None,
                              profile: str = "gaussian", axis: int = 0, modalities: Sequence[str] | None = None) -> Path:
    """Write ``<dataset>/thick_slice/<case>_<modality>.nii.gz`` (+ BIDS sidecar with the thick voxel size and
    ``<case>_brainmask.nii.gz``): every image of a phantom dataset acquired with thick slices, ready for
    ``unisyn_predict -i <dataset>/thick_slice``. The origin (first slice centre) moves so the box is the same."""
    from unisyn_v2.dataset.image_io import Geometry, read_image, write_image
    from unisyn_v2.io_utils import write_json_atomic
    from unisyn_v2.metadata.fields import ImageMetadata
    from unisyn_v2.phantom.bids_export import bids_sidecar

    dataset_dir = Path(dataset_dir)
    description = json.loads((dataset_dir / "dataset.json").read_text())
    out_dir = dataset_dir / THICK_SLICE_FOLDER
    out_dir.mkdir(exist_ok=True)
    written = 0
    for case in description["cases"]:
        geometry: Geometry | None = None
        for image in case["images"]:
            if modalities is not None and image["modality"] not in modalities:
                continue
            array, geometry = read_image(dataset_dir / image["file"])
            thick, thick_geometry = _thick_geometry(array, geometry, thickness_mm, slice_spacing_mm, axis, profile)
            stem = f"{case['id']}_{image['modality']}"
            write_image(out_dir / f"{stem}.nii.gz", thick, thick_geometry)
            metadata = ImageMetadata.from_dict({**image.get("metadata", {}), "voxel_size": list(thick_geometry.spacing_xyz)})
            sidecar: dict[str, Any] = {**bids_sidecar(metadata, image["modality"]), "SliceThickness": float(thickness_mm),
                                       "SliceProfile": profile}  # BIDS units (seconds), as unisyn_predict reads them
            write_json_atomic(out_dir / f"{stem}.json", sidecar)
            written += 1
        if case.get("brain_mask") and geometry is not None:
            mask, mask_geometry = read_image(dataset_dir / case["brain_mask"])
            soft, thick_geometry = _thick_geometry(mask.astype(np.float32), mask_geometry, thickness_mm, slice_spacing_mm,
                                                   axis, "rect")
            write_image(out_dir / f"{case['id']}_brainmask.nii.gz", (soft >= 0.5).astype(np.uint8), thick_geometry)
    write_json_atomic(out_dir / "slice_profile.json", {"slice_thickness_mm": thickness_mm, "profile": profile, "axis_zyx": axis,
                                                       "slice_spacing_mm": slice_spacing_mm or thickness_mm})
    logger.info("wrote %d thick-slice image(s) (%.2f mm, %s profile) to %s", written, thickness_mm, profile, out_dir)
    return out_dir


def _thick_geometry(array: np.ndarray, geometry: Any, thickness_mm: float, slice_spacing_mm: float | None, axis: int,
                    profile: str) -> tuple[np.ndarray, Any]:
    """The thick-slice array and its geometry: spacing and size change along the axis, the box stays."""
    from dataclasses import replace

    thick, spacing_zyx = render_thick_slices(array, geometry.spacing_zyx, thickness_mm, slice_spacing_mm, axis, profile)
    spacing_xyz = tuple(float(v) for v in reversed(spacing_zyx))
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    shift = (np.asarray(spacing_xyz) - np.asarray(geometry.spacing_xyz)) / 2.0  # first centre moves by half the difference
    origin = tuple(float(v) for v in np.asarray(geometry.origin_xyz) + direction @ shift)
    return thick, replace(geometry, spacing_xyz=spacing_xyz, origin_xyz=origin, shape_zyx=tuple(int(n) for n in thick.shape))
