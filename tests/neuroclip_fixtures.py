"""A tiny preprocessed multi-modal dataset for NeuroCLIP tests, written straight in the preprocessed layout.

Each case is a blob brain (white matter core, cortical grey-matter ribbon shaped by a smooth random
field, ventricles and an outer CSF rim). Images follow simple signal equations of the tissue T1/T2/PD
at the image's field strength (spin echo, inversion recovery), CT attenuation and FDG uptake, so the
contrast depends on the modality *and* on TR/TE/TI: retrieval can be learned. MRI is normalised as
the pipeline does (p0.5/p99.5 in the brain), CT by the HU window, PET by a constant.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from unisyn_v2.contracts.plans import (
    ConfigurationPlan, NeuroCLIPPlan, NormalizationPlan, Plans, TextEncoderPlan, TrainingPlan,
)
from unisyn_v2.experiment_planning.splits import make_splits
from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.classes import metadata_class_key
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.preprocessing.case_store import PreprocessedCase, save_preprocessed_case

DATASET_NAME = "Dataset901_NeuroCLIPToy"
PLANS_NAME = "UniSynPlans"
MODALITIES = ("T1w", "T2w", "FLAIR", "PD", "CT", "FDG-PET")
# tissue: (T1 at 1.5 T, T1 at 3 T, T2 at 1.5 T, T2 at 3 T, PD), CT HU at 120 kVp, FDG SUV
TISSUES = {
    "wm": ((650.0, 1080.0, 80.0, 70.0, 0.69), 28.0, 3.0),
    "gm": ((1100.0, 1700.0, 100.0, 99.0, 0.80), 38.0, 8.0),
    "csf": ((3700.0, 4200.0, 1800.0, 1800.0, 1.00), 5.0, 0.4),
}



@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Module-wide: one intra-op thread (on a shared 2-core machine two threads competing with other
    processes ran ~10x slower). Import it into a test module to apply it there."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    axes = rng.uniform(0.62, 0.8, size=3)
    radius = np.sqrt((zz / axes[0]) ** 2 + (yy / axes[1]) ** 2 + (xx / axes[2]) ** 2)
    wobble = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 10)
    wobble /= np.abs(wobble).max() + 1e-6
    brain = radius + 0.08 * wobble < 1.0
    cortex_depth = 0.72 + 0.12 * wobble + rng.uniform(-0.05, 0.05)
    gm = brain & (radius > cortex_depth)
    ventricle_axes = rng.uniform(0.12, 0.3), rng.uniform(0.25, 0.4), rng.uniform(0.08, 0.16)
    vent = (zz / ventricle_axes[0]) ** 2 + (yy / ventricle_axes[1]) ** 2 + ((np.abs(xx) - 0.15) / ventricle_axes[2]) ** 2 < 1
    rim = brain & (radius > 0.95)
    csf = (vent | rim) & brain
    labels = {"csf": csf, "gm": gm & ~csf, "wm": brain & ~gm & ~csf}
    smooth = {k: ndimage.gaussian_filter(v.astype(np.float32), 0.7) for k, v in labels.items()}
    total = sum(smooth.values()) + 1e-6
    fractions = {k: np.where(brain, v / total, 0.0).astype(np.float32) for k, v in smooth.items()}
    return fractions, brain.astype(np.uint8)


def _protocol(rng: np.random.Generator, modality: str, field: float, vendor: str) -> ImageMetadata:
    voxel = (2.0, 2.0, 2.0)
    if modality == "T1w":
        return ImageMetadata(field, vendor, voxel_size=voxel, repetition_time=round(float(rng.uniform(1800, 2500)), 1),
                             echo_time=round(float(rng.uniform(2.0, 4.0)), 2), inversion_time=round(float(rng.uniform(800, 1100)), 1),
                             flip_angle=8.0)
    if modality == "T2w":
        return ImageMetadata(field, vendor, voxel_size=voxel, repetition_time=round(float(rng.uniform(3000, 6000)), 1),
                             echo_time=round(float(rng.uniform(40, 140)), 1), flip_angle=90.0)
    if modality == "FLAIR":
        return ImageMetadata(field, vendor, voxel_size=voxel, repetition_time=round(float(rng.uniform(8000, 10000)), 1),
                             echo_time=round(float(rng.uniform(80, 140)), 1), inversion_time=round(float(rng.uniform(2300, 2600)), 1),
                             flip_angle=150.0)
    if modality == "PD":
        return ImageMetadata(field, vendor, voxel_size=voxel, repetition_time=round(float(rng.uniform(2500, 4000)), 1),
                             echo_time=round(float(rng.uniform(8, 25)), 1), flip_angle=90.0)
    if modality == "CT":
        return ImageMetadata(voxel_size=voxel, kvp=float(rng.choice([100.0, 120.0, 140.0])))
    return ImageMetadata(voxel_size=voxel, tracer="FDG", unit="SUV", injected_dose=round(float(rng.uniform(150, 300)), 1),
                         uptake_time=round(float(rng.uniform(30, 60)), 1))


def _signal(modality: str, meta: ImageMetadata, tissue: str) -> float:
    (t1_15, t1_30, t2_15, t2_30, pd), hu, suv = TISSUES[tissue]
    if modality == "CT":
        return hu * (1.0 + 0.1 * (120.0 - meta.kvp) / 20.0)
    if modality == "FDG-PET":
        return suv * meta.uptake_time / 45.0
    t1 = t1_30 if meta.field_strength > 2.25 else t1_15
    t2 = t2_30 if meta.field_strength > 2.25 else t2_15
    tr, te = meta.repetition_time, meta.echo_time
    decay = np.exp(-te / t2)
    if meta.inversion_time:
        return pd * abs(1 - 2 * np.exp(-meta.inversion_time / t1) + np.exp(-tr / t1)) * decay
    return pd * (1 - np.exp(-tr / t1)) * decay


def _image(rng: np.random.Generator, modality: str, meta: ImageMetadata, fractions: dict[str, np.ndarray],
           mask: np.ndarray) -> np.ndarray:
    image = sum(_signal(modality, meta, t) * f for t, f in fractions.items())
    inside = mask > 0
    if modality == "CT":
        image = image + rng.normal(0, 3.0, size=image.shape) * inside
        image = np.where(inside, image, -1000.0)
        return ((np.clip(image, -1024, 3071) + 1024) / 4095).astype(np.float32)
    if modality == "FDG-PET":
        image = ndimage.gaussian_filter(image, 1.0) * (1 + 0.05 * rng.normal(size=image.shape))
        return (image * inside / 10.0).astype(np.float32)
    image = image * (1 + 0.04 * rng.normal(size=image.shape))
    low, high = np.percentile(image[inside], [0.5, 99.5])
    return ((image - low) / (high - low + 1e-8) * inside).astype(np.float32)


def toy_plans(image_size: tuple[int, int, int] = (16, 16, 16), **neuroclip: Any) -> Plans:
    """Plans with a tiny text encoder and NeuroCLIP image side (overrides go to NeuroCLIPPlan)."""
    config = ConfigurationPlan("3d", f"{PLANS_NAME}_data", (16, 16, 16), 2, (2.0, 2.0, 2.0), (36, 36, 36), {}, {}, 0.1)
    clip = replace(NeuroCLIPPlan(image_size=image_size, downsample=2, image_widths=(8, 16, 32), num_epochs=2,
                                 iterations_per_epoch=3, initial_lr=1e-3, max_batch_classes=32), **neuroclip)
    return Plans(
        plans_name=PLANS_NAME, dataset_name=DATASET_NAME, planner="tests", preset="cpu", modalities=MODALITIES,
        normalization={m: NormalizationPlan("test") for m in MODALITIES}, target_spacing_zyx=(2.0, 2.0, 2.0),
        resampling={}, default_configuration="3d", configurations={"3d": config},
        text_encoder=TextEncoderPlan(context_length=224, width=32, layers=2, heads=4, embed_dim=32),
        neuroclip=clip, training=TrainingPlan(validation_iterations=2), gpu_memory_gb=None,
    )


def write_toy_dataset(preprocessed_root: Path, num_cases: int = 12, shape: tuple[int, int, int] = (36, 36, 36),
                      seed: int = 0, plans: Plans | None = None, modalities: tuple[str, ...] = MODALITIES) -> tuple[Path, Plans]:
    """Write ``<root>/Dataset901_NeuroCLIPToy/`` (plans, splits, dataset.json, data folder); returns (folder, plans)."""
    plans = plans or toy_plans()
    folder = Path(preprocessed_root) / DATASET_NAME
    data_folder = folder / plans.configuration().data_identifier
    rng = np.random.default_rng(seed)
    case_ids = [f"toy_{i:03d}" for i in range(num_cases)]
    for case_id in case_ids:
        fractions, mask = _anatomy(rng, shape)
        subject = SubjectMetadata(age=round(float(rng.uniform(20, 90)), 1), sex=str(rng.choice(["M", "F"])))
        field = float(rng.choice([1.5, 3.0]))
        vendor = str(rng.choice(["Siemens", "GE", "Philips"]))
        channels, arrays = [], []
        for modality in modalities:
            meta = _protocol(rng, modality, field, vendor)
            description = ImageDescription(modality, meta, subject)
            arrays.append(_image(rng, modality, meta, fractions, mask))
            channels.append({"modality": modality, "metadata": meta.to_dict(), "prompt": description.prompt(),
                             "class_key": metadata_class_key(description),
                             "normalization": {"scheme": "test", "values": {}}, "file": None})
        properties = {"case_id": case_id, "subject": subject.to_dict(), "channels": channels,
                      "target_spacing_zyx": [2.0, 2.0, 2.0], "shape_after_resampling_zyx": list(shape)}
        save_preprocessed_case(data_folder, PreprocessedCase(case_id, np.stack(arrays), mask, properties))
    plans.save(folder / f"{plans.plans_name}.json")
    write_json_atomic(folder / "splits_final.json", make_splits(case_ids))
    write_json_atomic(folder / "dataset.json", {"name": "NeuroCLIPToy", "description": "NeuroCLIP test data", "cases": []})
    return folder, plans
