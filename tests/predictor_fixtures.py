"""Stand-ins for predictor tests: plans built in memory, tiny networks, a model folder and its loader.

The stand-in model folder mirrors the trainers' layout (plans.json, trainer.json, fold_N/) so the
predictor's -m / -d -tr -c paths run without a trained model; the loader is patched in by tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unisyn_v2.dataset.image_io import Geometry, write_image
from unisyn_v2.contracts.plans import (
    ConfigurationPlan, NeuroCLIPPlan, NormalizationPlan, Plans, TextEncoderPlan, TrainingPlan,
)
from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.networks.conditioners import OneHotConditioner
from unisyn_v2.networks.outputs import SynthesisOutput

NORMALIZATION = {
    "T1w": NormalizationPlan("mri_percentile", {"lower_percentile": 0.5, "upper_percentile": 99.5}),
    "T2w": NormalizationPlan("mri_percentile", {"lower_percentile": 0.5, "upper_percentile": 99.5}),
    "CT": NormalizationPlan("ct_window", {"clip_low": -1024.0, "clip_high": 3071.0}),
    "FDG-PET": NormalizationPlan("pet_suv", {"dataset_scale": 8.0, "unit": "SUV"}),
}
TYPICAL = {
    "T1w": {"field_strength": 3.0, "manufacturer": "Siemens", "repetition_time": 2300.0, "echo_time": 2.3, "flip_angle": 8.0},
    "CT": {"kvp": 120.0},
    "FDG-PET": {"tracer": "FDG", "unit": "SUV", "injected_dose": 250.0, "uptake_time": 45.0},
}


def make_plans(modalities: tuple[str, ...] = ("T1w", "CT", "FDG-PET"), spacing_zyx: tuple[float, float, float] = (2.0, 1.5, 1.5),
               patch_zyx: tuple[int, int, int] = (8, 16, 16)) -> Plans:
    """Plans with both configurations; the normalisation of T2w is planned even if not trained."""
    configurations = {
        name: ConfigurationPlan(name, "unisynPlans_data", patch_zyx, 2, spacing_zyx, (20, 24, 24),
                                {"dims": 2 if name == "2.5d" else 3}, {}, 0.01)
        for name in ("2.5d", "3d")
    }
    return Plans("unisynPlans", "Dataset001_Stand", "test", "cpu", tuple(modalities),
                 {m: NORMALIZATION[m] for m in (*modalities, "T2w") if m in NORMALIZATION}, spacing_zyx,
                 {"image_order": 1, "mask_order": 0, "anisotropy_threshold": 3.0}, "3d", configurations,
                 TextEncoderPlan(), NeuroCLIPPlan(), TrainingPlan(), None,
                 {m: TYPICAL[m] for m in modalities if m in TYPICAL})


class IdentityNetwork(nn.Module):
    """Returns its input (2D or 3D): a perfect network for a same-modality 'synthesis'."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        assert source_text.shape[0] == target_text.shape[0] == source.shape[0]
        return SynthesisOutput(synthesis=source + self.dummy, anatomy=None)


class ConstantNetwork(nn.Module):
    """Returns a constant normalised value everywhere (checks the unit restoration)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        return SynthesisOutput(synthesis=torch.full_like(source, self.value), anatomy=None)


def conditioner(plans: Plans) -> OneHotConditioner:
    """One-hot codes over the plans' modalities."""
    return OneHotConditioner(plans.modalities)


def oblique_direction(angle_z_deg: float = 25.0, angle_x_deg: float = 10.0) -> tuple[float, ...]:
    """A proper rotation (row-major 3x3), not axis-aligned."""
    a, b = math.radians(angle_z_deg), math.radians(angle_x_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple(float(v) for v in (rz @ rx).ravel())


def head_phantom(shape: tuple[int, int, int], background: float, brain: float, shell: float, seed: int = 0) -> np.ndarray:
    """An ellipsoid 'brain' in a 'skull' shell with a smooth gradient and a little noise."""
    rng = np.random.RandomState(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt(zz**2 + yy**2 + xx**2)
    array = np.full(shape, background, dtype=np.float32)
    inside = radius < 0.6
    array[inside] = brain * (1 + 0.3 * yy[inside]) + abs(brain) * 0.02 * rng.randn(int(inside.sum()))
    array[(radius >= 0.6) & (radius < 0.8)] = shell
    return array


def write_case_image(path: Path, array: np.ndarray, spacing_xyz: tuple[float, float, float] = (1.5, 1.5, 2.0),
                     origin_xyz: tuple[float, float, float] = (-20.0, 13.5, 7.25),
                     direction: tuple[float, ...] = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)) -> Geometry:
    """Write an image and return its geometry."""
    geometry = Geometry(tuple(array.shape), spacing_xyz, origin_xyz, direction)  # type: ignore[arg-type]
    write_image(path, array, geometry)
    return geometry


def write_model_folder(root: Path, plans: Plans, trainer: str = "GFMTrainer", short_name: str = "gfm",
                       configuration: str = "3d", network: str = "identity", folds: tuple[str, ...] = ("0",),
                       modalities: tuple[str, ...] | None = None) -> Path:
    """A model folder in the trainers' layout; ``network`` is 'identity' or 'constant:<value>'."""
    folder = root / f"{trainer}__{plans.plans_name}__{configuration}"
    plans.save(folder / "plans.json")
    info = {"trainer_class": f"tests:{trainer}", "trainer_name": short_name, "configuration": configuration,
            "modalities": list(modalities or plans.modalities), "typical_metadata": plans.typical_metadata,
            "conditioning": "onehot", "stand_in_network": network}
    write_json_atomic(folder / "trainer.json", info)
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"stand-in")
    (folder / "fold_all").mkdir()  # no checkpoint: never part of the default ensemble
    return folder


def stand_in_loader(model_folder: Path, fold: Any, checkpoint_name: str, device: torch.device) -> tuple[Any, Any, dict, Plans]:
    """Same contract as unisyn_v2.models.folder.load_trained_model, for stand-in folders."""
    folder = Path(model_folder)
    if not (folder / f"fold_{fold}").is_dir():
        raise FileNotFoundError(f"{folder}: no fold_{fold}")
    plans = Plans.load(folder / "plans.json")
    info = read_json(folder / "trainer.json")
    kind = info["stand_in_network"]
    network: nn.Module = IdentityNetwork() if kind == "identity" else ConstantNetwork(float(kind.split(":")[1]))
    return network.to(device).eval(), conditioner(plans), info, plans
