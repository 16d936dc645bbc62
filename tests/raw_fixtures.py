"""Tiny raw datasets written on the fly (blob anatomy, no physics) for pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unisyn_v2.dataset.image_io import Geometry, write_image

MODALITY_VALUES = {  # background, brain, "bone" shell
    "T1w": (0.0, 600.0, 200.0),
    "T2w": (0.0, 400.0, 100.0),
    "CT": (-1000.0, 35.0, 1200.0),
    "FDG-PET": (0.0, 6.0, 0.5),
}
METADATA = {
    "T1w": {"field_strength": 3.0, "manufacturer": "Siemens", "repetition_time": 2300.0, "echo_time": 2.3, "inversion_time": 900.0, "flip_angle": 8.0},
    "T2w": {"field_strength": 3.0, "manufacturer": "GE", "repetition_time": 4000.0, "echo_time": 90.0, "flip_angle": 90.0},
    "CT": {"kvp": 120.0},
    "FDG-PET": {"tracer": "FDG", "unit": "SUV", "injected_dose": 250.0, "uptake_time": 45.0},
}


def write_blob_dataset(root: Path, num_cases: int = 3, shape: tuple[int, int, int] = (20, 24, 22),
                       spacing_xyz: tuple[float, float, float] = (2.0, 2.0, 2.5),
                       modalities: tuple[str, ...] = ("T1w", "CT", "FDG-PET"), seed: int = 0) -> Path:
    """A dataset whose cases hold a noisy ellipsoid 'brain' inside a 'skull' shell."""
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    cases = []
    for index in range(num_cases):
        case_id = f"case_{index:03d}"
        radius = np.sqrt(zz**2 + yy**2 + xx**2) * (1.0 + 0.05 * rng.randn())
        brain = radius < 0.6
        skull = (radius >= 0.6) & (radius < 0.8)
        geometry = Geometry(shape, spacing_xyz, (10.0 * index, -5.0, 3.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        images = []
        for modality in modalities:
            background, inside, shell = MODALITY_VALUES[modality]
            array = np.full(shape, background, dtype=np.float32)
            array[brain] = inside * (1 + 0.3 * zz[brain])
            array[skull] = shell
            array += (abs(inside) * 0.02 * rng.randn(*shape)).astype(np.float32) * (brain | skull)
            file = f"{case_id}/{case_id}_{modality}.nii.gz"
            write_image(root / file, array, geometry)
            images.append({"file": file, "modality": modality, "metadata": METADATA[modality]})
        mask_file = f"{case_id}/{case_id}_brainmask.nii.gz"
        write_image(root / mask_file, brain.astype(np.uint8), geometry, dtype=np.uint8)
        cases.append({"id": case_id, "subject": {"age": 40.0 + index, "sex": "F" if index % 2 else "M"},
                      "brain_mask": mask_file, "images": images})
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "cases": cases}, indent=1))
    return root
