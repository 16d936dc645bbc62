"""Image geometry, NIfTI writing, and user-supplied tissue probability maps.

A folder of maps replaces the procedural anatomy: one NIfTI per tissue named ``<tissue>.nii.gz`` (or
``.nii``) with the names of :data:`.tissues.TISSUES`; ``gm``, ``wm`` and ``csf`` are required (e.g. SPM
``c1``/``c2``/``c3`` or FSL FAST outputs renamed), the others (``deep_gm``, ``lesion``, ``bone``, ``fat``,
``muscle``, ``marrow``, ``vessel``, ``choroid``, ``mtl``) are optional and absent ones are zero. Voxels
whose fractions sum to less than 1 are filled with air; sums above 1 are normalised. A folder whose
sub-folders each hold such a set gives one anatomy per sub-folder, used by the cases in turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from unisyn_v2.dataset.image_io import verify_image_file
from unisyn_v2.io_utils import replace_atomic

from .tissues import TISSUES

logger = logging.getLogger(__name__)

REQUIRED_MAPS: tuple[str, ...] = ("gm", "wm", "csf")
OPTIONAL_MAPS: tuple[str, ...] = tuple(t for t in TISSUES if t not in REQUIRED_MAPS and t != "air")


@dataclass(frozen=True)
class VolumeGeometry:
    """SimpleITK geometry: spacing and origin in (x, y, z) mm, direction as 9 cosines (row-major)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def centred(cls, shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float]) -> "VolumeGeometry":
        """Identity orientation with the volume centre at the origin (the scanner isocentre)."""
        spacing = tuple(float(s) for s in spacing_xyz)
        origin = tuple(-0.5 * (n - 1) * s for n, s in zip(reversed(shape_zyx), spacing))
        return cls(spacing, origin)  # type: ignore[arg-type]

    @classmethod
    def of(cls, image: sitk.Image) -> "VolumeGeometry":
        """Geometry of a SimpleITK image."""
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))  # type: ignore[arg-type]


def write_nifti(array: np.ndarray, geometry: VolumeGeometry, path: Path) -> Path:
    """Write a (z, y, x) array with its geometry; a temp name and a rename keep readers from half files."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return replace_atomic(Path(path), lambda temp: sitk.WriteImage(image, str(temp), useCompression=True),
                          verify=verify_image_file)


def _find(folder: Path, name: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load_set(folder: Path) -> tuple[dict[str, np.ndarray], VolumeGeometry]:
    maps: dict[str, np.ndarray] = {}
    geometry: VolumeGeometry | None = None
    for name in (*REQUIRED_MAPS, *OPTIONAL_MAPS):
        path = _find(folder, name)
        if path is None:
            continue
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        here = VolumeGeometry.of(image)
        if geometry is None:
            geometry = here
        elif not (np.allclose(here.spacing, geometry.spacing, atol=1e-3)
                  and np.allclose(here.origin, geometry.origin, atol=1e-2)):
            raise ValueError(f"{path}: geometry differs from the other tissue maps in {folder}")
        array = np.clip(sitk.GetArrayFromImage(image), 0.0, None).astype(np.float32)
        if maps and array.shape != next(iter(maps.values())).shape:
            raise ValueError(f"{path}: shape {array.shape} differs from the other tissue maps in {folder}")
        maps[name] = array
    if geometry is None:
        raise FileNotFoundError(f"{folder}: no tissue maps found")
    total = sum(maps.values())
    over = np.maximum(total, 1.0)
    tissues = {t: (maps[t] / over if t in maps else np.zeros_like(total)).astype(np.float32) for t in TISSUES if t != "air"}
    tissues["air"] = np.clip(1.0 - total / over, 0.0, 1.0).astype(np.float32)
    logger.info("loaded tissue maps %s from %s", ", ".join(sorted(maps)), folder)
    return {t: tissues[t] for t in TISSUES}, geometry


def load_tissue_maps(directory: Path) -> list[tuple[dict[str, np.ndarray], VolumeGeometry]]:
    """Tissue-fraction sets (with geometry) from ``directory`` or from each of its sub-folders."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tissue map folder {directory} does not exist")

    def complete(folder: Path) -> bool:
        return all(_find(folder, name) is not None for name in REQUIRED_MAPS)

    folders = [directory] if complete(directory) else sorted(p for p in directory.iterdir() if p.is_dir() and complete(p))
    if not folders:
        raise FileNotFoundError(
            f"{directory}: no tissue maps found; expected {', '.join(n + '.nii.gz' for n in REQUIRED_MAPS)} "
            f"(optional: {', '.join(OPTIONAL_MAPS)}) in the folder or in each of its sub-folders"
        )
    return [_load_set(folder) for folder in folders]
