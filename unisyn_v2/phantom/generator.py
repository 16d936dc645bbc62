"""Write a raw phantom dataset: cases with random modality subsets, brain masks and dataset.json.

Every case draws from its own random streams (subject, anatomy, session, one per modality), keyed by
the seed and the case index, so a case is the same whatever other cases or modalities are requested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.parallel import map_cases

from .anatomy import brain_mask, simulate_subject
from .protocols import FIELD_STRENGTHS, MANUFACTURERS, MR_MODELS, PET_MODELS, draw_protocol
from .simulate import simulate_image
from .tissue_maps import VolumeGeometry, load_tissue_maps, write_nifti
from .tissues import draw_subject

logger = logging.getLogger(__name__)

PHANTOM_MODALITIES: tuple[str, ...] = (
    "T1w", "T1CE", "T2w", "PD", "FLAIR", "T2star", "SWI", "CT", "FDG-PET", "AV45-PET", "TAU-PET",
)
# Availability patterns of public multi-modal brain collections (IXI: T1/T2/PD; BraTS: T1/T1CE/T2/FLAIR;
# MR-CT radiotherapy sets; PET/CT; ADNI: T1 + FLAIR + FDG/AV45/tau; SWI studies) with sampling weights.
PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("T1w", "T2w", "PD", "FLAIR"), 0.15), (("T1w", "T1CE", "T2w", "FLAIR"), 0.15), (("T1w", "CT"), 0.12),
    (("T1w", "CT", "FDG-PET"), 0.10), (("T1w", "FDG-PET"), 0.10), (("T1w", "AV45-PET"), 0.08),
    (("T1w", "FLAIR", "FDG-PET", "AV45-PET"), 0.06), (("T1w", "AV45-PET", "TAU-PET"), 0.06),
    (("T1w", "T2star", "SWI"), 0.06), (("T1w", "FLAIR"), 0.04), (("T2w", "FLAIR"), 0.04), (("CT", "FDG-PET"), 0.04),
)
EXTRA_MODALITY_PROBABILITY = 0.04
_SESSION_STREAM, _SUBJECT_STREAM, _ANATOMY_STREAM, _IMAGE_STREAM = 0, 1, 2, 100


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs to write one case."""

    output_dir: Path
    seed: int
    num_cases: int
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    modalities: tuple[str, ...]
    skull_strip: bool
    tissue_maps_dir: Path | None
    complete: bool = False


def case_rng(seed: int, case_index: int, stream: int) -> np.random.Generator:
    """Independent random stream ``stream`` of case ``case_index``."""
    return np.random.default_rng([int(seed), int(case_index), int(stream)])


def choose_modalities(rng: np.random.Generator, allowed: Sequence[str]) -> list[str]:
    """A random availability pattern restricted to ``allowed``, topped up to at least two modalities."""
    allowed = [m for m in PHANTOM_MODALITIES if m in set(allowed)]
    weights = np.array([w for _, w in PATTERNS])
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=weights / weights.sum()))][0]
    chosen = {m for m in pattern if m in allowed}
    chosen |= {m for m in allowed if rng.random() < EXTRA_MODALITY_PROBABILITY}
    while len(chosen) < min(2, len(allowed)):
        rest = [m for m in allowed if m not in chosen]
        chosen.add("T1w" if "T1w" in rest and rng.random() < 0.9 else str(rng.choice(rest)))
    return [m for m in allowed if m in chosen]


def _session(rng: np.random.Generator) -> dict[str, Any]:
    """Scanner fields shared by the images of one visit (one MR scanner, one PET scanner)."""
    field = float(rng.choice(FIELD_STRENGTHS, p=[0.4, 0.6]))
    mr_vendor, ct_vendor, pet_vendor = (str(rng.choice(MANUFACTURERS)) for _ in range(3))
    return {
        ModalityFamily.MRI: {"field_strength": field, "manufacturer": mr_vendor,
                             "scanner_model": str(rng.choice(MR_MODELS[(mr_vendor, field)]))},
        ModalityFamily.CT: {"manufacturer": ct_vendor},
        ModalityFamily.PET: {"manufacturer": pet_vendor, "scanner_model": str(rng.choice(list(PET_MODELS[pet_vendor])))},
    }


@lru_cache(maxsize=2)
def _cached_maps(directory: Path) -> list[tuple[dict[str, np.ndarray], VolumeGeometry]]:
    return load_tissue_maps(directory)


def _write_case(context: _Context, case_index: int) -> dict[str, Any]:
    """Simulate and write one case; returns its dataset.json entry."""
    width = max(3, len(str(context.num_cases)))
    case_id = f"sub-{case_index + 1:0{width}d}"
    subject = draw_subject(case_rng(context.seed, case_index, _SUBJECT_STREAM))
    if context.tissue_maps_dir is not None:
        sets = _cached_maps(context.tissue_maps_dir)
        tissues, geometry = sets[case_index % len(sets)]
    else:
        tissues = simulate_subject(case_rng(context.seed, case_index, _ANATOMY_STREAM), context.shape,
                                   context.voxel_size, subject=subject)
        geometry = VolumeGeometry.centred(context.shape, context.voxel_size)
    mask = brain_mask(tissues)
    session_rng = case_rng(context.seed, case_index, _SESSION_STREAM)
    modalities = choose_modalities(session_rng, context.modalities)
    if context.complete:  # drawn anyway, so the other random streams are the same as without ``complete``
        modalities = list(context.modalities)
    session = _session(session_rng)
    folder = context.output_dir / case_id
    write_nifti(mask, geometry, folder / f"{case_id}_brainmask.nii.gz")
    images = []
    for name in modalities:
        modality = get_modality(name)
        rng = case_rng(context.seed, case_index, _IMAGE_STREAM + PHANTOM_MODALITIES.index(name))
        metadata = draw_protocol(name, rng, voxel_size=geometry.spacing, **session[modality.family])
        image = simulate_image(name, tissues, metadata, subject, rng)
        if context.skull_strip:  # as the papers' preprocessing: CT background at the window floor
            image[mask == 0] = -1024.0 if modality.family is ModalityFamily.CT else 0.0
        relative = f"{case_id}/{case_id}_{name}.nii.gz"
        write_nifti(image.astype(np.float32), geometry, context.output_dir / relative)
        images.append({"file": relative, "modality": name, "metadata": metadata.to_dict()})
    return {"id": case_id, "subject": subject.metadata().to_dict(),
            "brain_mask": f"{case_id}/{case_id}_brainmask.nii.gz", "images": images}


def _validated_modalities(modalities: Sequence[str] | None) -> tuple[str, ...]:
    if modalities is None:
        return PHANTOM_MODALITIES
    names = {get_modality(m).name for m in modalities}
    unsupported = sorted(names - set(PHANTOM_MODALITIES))
    if unsupported:
        raise ValueError(f"the phantom cannot simulate {', '.join(unsupported)}; "
                         f"it simulates {', '.join(PHANTOM_MODALITIES)}")
    if len(names) < 2:
        raise ValueError(f"every case needs at least two modalities; got {sorted(names)}")
    return tuple(m for m in PHANTOM_MODALITIES if m in names)


def generate_phantom_dataset(output_dir: Path, num_cases: int, seed: int, shape: tuple[int, int, int] = (64, 64, 64),
                             voxel_size_mm: tuple[float, float, float] = (3.2, 3.2, 3.2),
                             modalities: Sequence[str] | None = None, skull_strip: bool = False,
                             tissue_maps_dir: Path | None = None, overwrite: bool = False, name: str = "Phantom",
                             num_processes: int = 1, progress: bool = False, complete: bool = False) -> Path:
    """Write a raw dataset folder (images, brain masks, dataset.json) and return it.

    ``shape`` is (z, y, x) voxels and ``voxel_size_mm`` (x, y, z); with ``tissue_maps_dir`` the maps fix
    both. ``complete`` gives every case every allowed modality (paired data, e.g. for the demo and
    benchmarks) instead of a random clinical availability pattern. An existing non-empty ``output_dir`` is refused unless ``overwrite``; overwriting replaces only
    the files this function writes and deletes nothing.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1 (got {num_cases})")
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    voxel_size = tuple(float(v) for v in voxel_size_mm)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels (got {shape})")
    if len(voxel_size) != 3 or min(voxel_size) <= 0.0:
        raise ValueError(f"voxel_size_mm must be three positive sizes in mm (got {voxel_size_mm})")
    allowed = _validated_modalities(modalities)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite=True")
    maps_dir = None if tissue_maps_dir is None else Path(tissue_maps_dir).resolve()
    if maps_dir is not None:
        _cached_maps(maps_dir)  # fail before writing anything if the maps are unusable
        logger.info("anatomy from tissue maps in %s; their grid replaces shape and voxel_size_mm", maps_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    context = _Context(output_dir, int(seed), int(num_cases), shape, voxel_size,  # type: ignore[arg-type]
                       allowed, skull_strip, maps_dir, complete)
    cases = map_cases(_write_case, context, list(range(num_cases)), num_processes, progress, "phantom")
    anatomy = (f"tissue maps from {maps_dir}" if maps_dir is not None
               else f"shape {list(shape)} (z, y, x), voxel size {list(voxel_size)} mm (x, y, z)")
    description = (f"Physics-based multi-modal brain phantom (unisyn_v2.phantom): seed {seed}, {anatomy}"
                   + (", skull-stripped." if skull_strip else "."))
    dataset = {"name": name, "description": description, "reference": "unisyn_v2.phantom", "licence": "CC0-1.0",
               "cases": cases}
    write_json_atomic(output_dir / "dataset.json", dataset)
    n_images = sum(len(c["images"]) for c in cases)
    logger.info("wrote %d cases (%d images) to %s in %.1f s", len(cases), n_images, output_dir,
                time.perf_counter() - started)
    return output_dir
