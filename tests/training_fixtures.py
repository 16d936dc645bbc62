"""A tiny synthetic preprocessed dataset for the stage-2 training tests, written straight in the
preprocessed layout of ARCHITECTURE.md, plus a tiny random NeuroCLIP text-encoder artifact.

Each case is a smooth random "brain" (an ellipsoid mask with three soft tissue classes); T1w, CT and
FDG-PET are different smooth functions of the tissue fractions, normalised roughly to [0, 1], zero
outside the brain. The mappings between modalities are learnable, so a few iterations already beat
the identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unisyn_v2.contracts.plans import (
    ConfigurationPlan, NeuroCLIPPlan, NormalizationPlan, Plans, TextEncoderPlan, TrainingPlan,
)
from unisyn_v2.experiment_planning.splits import make_splits
from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.networks.text_artifact import save_text_encoder_artifact, text_encoder_artifact_folder
from unisyn_v2.networks.text_encoder import MetadataTextEncoder
from unisyn_v2.preprocessing.case_store import PreprocessedCase, save_preprocessed_case
from unisyn_v2.preprocessing.normalization import build_normalizer

DATASET_NAME = "Dataset902_TrainToy"
PLANS_NAME = "unisynPlans"
MODALITIES = ("T1w", "CT", "FDG-PET")
SHAPE = (16, 32, 32)
# tissue values per modality: (wm, gm, csf)
VALUES = {"T1w": (0.9, 0.6, 0.15), "CT": (0.27, 0.26, 0.25), "FDG-PET": (0.3, 0.8, 0.05)}
TEXT_DIM = 16
# the plans' intensity contract for the toy values (CT on the linear window, where 0.26 is about 40 HU)
NORMALIZATION = {"T1w": NormalizationPlan("mri_percentile", {"lower_percentile": 0.5, "upper_percentile": 99.5}),
                 "CT": NormalizationPlan("ct_window", {"clip_low": -1024.0, "clip_high": 3071.0}),
                 "FDG-PET": NormalizationPlan("pet_suv", {"dataset_scale": 1.0, "unit": "SUV"})}


def tiny_plans(slab_patch: tuple[int, int, int] = (4, 16, 16), volume_patch: tuple[int, int, int] = (8, 16, 16),
               batch_size: int = 2, training: TrainingPlan | None = None) -> Plans:
    """Plans with ~10k-parameter networks for the 2.5d and 3d configurations."""
    def net(dims: int, depth: int) -> dict:
        return {"dims": dims, "in_channels": depth, "out_channels": depth, "encoder_width": 8, "num_blocks": 1,
                "feature_dim": 8, "decoder_hidden": [16, 8], "text_dim": TEXT_DIM, "num_heads": 2}

    def unet(dims: int, depth: int) -> dict:
        strides = [[1] * dims, [2] * dims, [2] * dims] if dims == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
        return {"dims": dims, "in_channels": depth, "out_channels": depth, "n_stages": 3,
                "features_per_stage": [4, 8, 16], "strides": strides}

    configurations = {
        "2.5d": ConfigurationPlan("2.5d", f"{PLANS_NAME}_data", slab_patch, batch_size, (2.0, 2.0, 2.0), SHAPE,
                                  net(2, slab_patch[0]), unet(2, slab_patch[0]), 0.01),
        "3d": ConfigurationPlan("3d", f"{PLANS_NAME}_data", volume_patch, batch_size, (2.0, 2.0, 2.0), SHAPE,
                                net(3, 1), unet(3, 1), 0.01),
    }
    return Plans(
        plans_name=PLANS_NAME, dataset_name=DATASET_NAME, planner="tests", preset="cpu", modalities=MODALITIES,
        normalization=dict(NORMALIZATION), target_spacing_zyx=(2.0, 2.0, 2.0),
        resampling={}, default_configuration="2.5d", configurations=configurations,
        text_encoder=TextEncoderPlan(context_length=224, width=16, layers=1, heads=2, embed_dim=TEXT_DIM),
        neuroclip=NeuroCLIPPlan(), gpu_memory_gb=None,
        training=training or TrainingPlan(num_epochs=2, iterations_per_epoch=3, validation_iterations=2, initial_lr=3e-3),
    )


def _fractions(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt((zz / 0.85) ** 2 + (yy / rng.uniform(0.7, 0.85)) ** 2 + (xx / rng.uniform(0.65, 0.8)) ** 2)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    field /= np.abs(field).max() + 1e-6
    mask = radius < 1.0
    gm = mask & (radius + 0.25 * field > 0.6)
    csf = mask & ((radius > 0.92) | (np.abs(xx) < 0.12) & (np.abs(yy) < 0.3) & (np.abs(zz) < 0.5))
    wm = mask & ~gm & ~csf
    smooth = [ndimage.gaussian_filter(t.astype(np.float32), 0.8) * mask for t in (wm, gm & ~csf, csf)]
    total = sum(smooth) + 1e-6
    return [np.where(mask, s / total, 0).astype(np.float32) for s in smooth], mask.astype(np.uint8)


def _metadata(modality: str) -> ImageMetadata:
    if modality == "T1w":
        return ImageMetadata(3.0, "Siemens", voxel_size=(2.0, 2.0, 2.0), repetition_time=2300.0, echo_time=2.3,
                             inversion_time=900.0, flip_angle=8.0)
    if modality == "CT":
        return ImageMetadata(voxel_size=(2.0, 2.0, 2.0), kvp=120.0)
    return ImageMetadata(voxel_size=(2.0, 2.0, 2.0), tracer="FDG", unit="SUV", injected_dose=250.0, uptake_time=45.0)


def _channel_normalization(modality: str) -> dict[str, Any]:
    plan = NORMALIZATION[modality]
    return build_normalizer(plan.scheme, dict(plan.kwargs)).default_target_parameters().to_dict()


def write_training_dataset(preprocessed_root: Path, num_cases: int = 5, shape: tuple[int, int, int] = SHAPE,
                           seed: int = 0, plans: Plans | None = None) -> tuple[Path, Plans]:
    """Write ``<root>/Dataset902_TrainToy/`` (plans, splits, dataset.json, cases); returns (folder, plans)."""
    plans = plans or tiny_plans()
    folder = Path(preprocessed_root) / DATASET_NAME
    data_folder = folder / plans.configuration().data_identifier
    rng = np.random.default_rng(seed)
    case_ids = [f"case_{i:03d}" for i in range(num_cases)]
    for case_id in case_ids:
        fractions, mask = _fractions(rng, shape)
        subject = SubjectMetadata(age=round(float(rng.uniform(30, 80)), 1), sex=str(rng.choice(["M", "F"])))
        arrays, channels = [], []
        for modality in MODALITIES:
            image = sum(v * f for v, f in zip(VALUES[modality], fractions)) * (1 + 0.02 * rng.normal(size=shape))
            arrays.append((image * mask).astype(np.float32))
            meta = _metadata(modality)
            channels.append({"modality": modality, "metadata": meta.to_dict(),
                             "prompt": ImageDescription(modality, meta, subject).prompt(), "class_key": modality,
                             "normalization": _channel_normalization(modality), "file": None})
        properties = {"case_id": case_id, "subject": subject.to_dict(), "channels": channels,
                      "target_spacing_zyx": [2.0, 2.0, 2.0], "shape_after_resampling_zyx": list(shape)}
        head = ndimage.binary_dilation(mask > 0, iterations=2).astype(np.uint8)  # a "skull" shell around the brain
        save_preprocessed_case(data_folder, PreprocessedCase(case_id, np.stack(arrays), mask, properties, head))
    plans.save(folder / f"{plans.plans_name}.json")
    write_json_atomic(folder / "splits_final.json", make_splits(case_ids))
    write_json_atomic(folder / "dataset.json", {"name": "TrainToy", "description": "training test data", "cases": []})
    write_json_atomic(folder / "dataset_fingerprint.json", {"toy": True})
    return folder, plans


def write_text_encoder(results_root: Path, plans: Plans, seed: int = 0) -> Path:
    """A random tiny NeuroCLIP text-encoder artifact where stage 1 would write it."""
    import torch

    torch.manual_seed(seed)
    tokenizer = MetadataTokenizer.default()
    encoder = MetadataTextEncoder(tokenizer.vocab_size, context_length=tokenizer.context_length, width=16, layers=1,
                                  heads=2, embed_dim=TEXT_DIM, pad_token_id=tokenizer.pad_id, eot_token_id=tokenizer.eot_id)
    folder = text_encoder_artifact_folder(Path(results_root), plans.dataset_name, plans.plans_name)
    return save_text_encoder_artifact(folder, tokenizer, encoder, {"dataset": plans.dataset_name})


def make_trainer(trainer_class: type, dirs: dict[str, Path], fold: int | str = 0, configuration: str = "2.5d", **settings):
    """A trainer on the toy dataset with in-process loading (deterministic)."""
    import torch

    from unisyn_v2.training.settings import TrainerSettings

    folder = dirs["preprocessed"] / DATASET_NAME
    from unisyn_v2.contracts.plans import Plans as _Plans

    plans = _Plans.load(folder / f"{PLANS_NAME}.json")
    settings.setdefault("num_workers", 0)
    options = TrainerSettings(**settings)
    out = dirs["results"] / DATASET_NAME / trainer_class.model_folder_name(PLANS_NAME, configuration, options)
    return trainer_class(plans, configuration, fold, DATASET_NAME, folder, out, torch.device("cpu"), options)
