"""The dataset and models the training and prediction benchmarks share, made once per work folder.

A phantom at the MNI-like grid (182x218x182 voxels of 1 mm; T1w and CT, so every case has both and
every trainer, the single-task U-Net included, has data), planned by the real planner (the CPU preset
without a GPU, the GPU's free memory or ``--gpu-memory-gb`` with one) and preprocessed at 1 mm. Stage 1
(NeuroCLIP) and the synthesis models are trained for a handful of iterations: these benchmarks measure
speed and memory, not quality. Everything lives under ``work`` (``UNISYN_RAW``/``_PREPROCESSED``/
``_RESULTS`` point there) and is reused by later runs with the same work folder.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmarks.data")

DATASET_NAME = "BenchSpeed"
MODALITIES = ("T1w", "CT")


@dataclass(frozen=True)
class DataSpec:
    """What to generate and how to plan it."""

    work: Path
    dataset_id: int = 980
    cases: int = 4
    shape: tuple[int, int, int] = (182, 218, 182)  # (z, y, x)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (x, y, z) mm
    planner: str = "auto"
    gpu_memory_gb: float | None = None
    num_processes: int = 2
    seed: int = 0


def use_work_folder(work: Path) -> dict[str, str]:
    """Point unisyn_v2's three folders into ``work`` (for this process and its children)."""
    folders = {"UNISYN_RAW": str(work / "raw"), "UNISYN_PREPROCESSED": str(work / "preprocessed"),
               "UNISYN_RESULTS": str(work / "results")}
    os.environ.update(folders)
    return folders


def prepare_dataset(spec: DataSpec) -> dict[str, Any]:
    """Phantom -> plan -> preprocess (each step skipped when its output exists); returns timings and plans facts."""
    from unisyn_v2.dataset.ids import dataset_name_from_id
    from unisyn_v2.experiment_planning import api
    from unisyn_v2.io_utils import read_json
    from unisyn_v2.paths import preprocessed_dir, raw_dir
    from unisyn_v2.phantom import generate_phantom_dataset

    use_work_folder(spec.work)
    name = dataset_name_from_id(spec.dataset_id, DATASET_NAME)
    timings: dict[str, float] = {}
    raw = raw_dir() / name
    if not (raw / "dataset.json").is_file():
        started = time.perf_counter()
        generate_phantom_dataset(raw, num_cases=spec.cases, seed=spec.seed, shape=spec.shape, voxel_size_mm=spec.voxel_size,
                                 modalities=list(MODALITIES), name=DATASET_NAME, num_processes=spec.num_processes,
                                 overwrite=True)
        timings["phantom_s"] = round(time.perf_counter() - started, 1)
    plans_path = preprocessed_dir() / name / "unisynPlans.json"
    if not plans_path.is_file():
        started = time.perf_counter()
        api.plan_and_preprocess(spec.dataset_id, planner=spec.planner, gpu_memory_gb=spec.gpu_memory_gb,
                                num_processes=spec.num_processes, progress=False)
        timings["plan_and_preprocess_s"] = round(time.perf_counter() - started, 1)
    plans = api.load_plans(spec.dataset_id)
    cases = len(read_json(raw / "dataset.json")["cases"])  # a reused dataset keeps the size it was made with
    logger.info("dataset %s ready (%s)", name, timings or "reused")
    return {"dataset": name, "dataset_id": spec.dataset_id, "cases": cases, "shape_zyx": list(spec.shape),
            "voxel_size_xyz_mm": list(spec.voxel_size), "modalities": list(MODALITIES), "timings": timings,
            "plans": plans_summary(plans)}


def plans_summary(plans: Any) -> dict[str, Any]:
    """Preset, budget and, per configuration, patch, batch and the planner's memory estimate."""
    return {"preset": plans.preset, "gpu_memory_gb": plans.gpu_memory_gb,
            "configurations": {name: {"patch_size": list(c.patch_size), "batch_size": c.batch_size,
                                      "estimated_memory_gb": c.estimated_memory_gb,
                                      "median_shape_zyx": list(c.median_shape_zyx)}
                               for name, c in plans.configurations.items()}}


def ensure_text_encoder(spec: DataSpec, device: str) -> None:
    """A real stage-1 run (NeuroCLIP), two iterations: the text encoder the GFM and cross-attention load frozen."""
    from unisyn_v2.networks.text_artifact import text_encoder_artifact_folder
    from unisyn_v2.paths import results_dir
    from unisyn_v2.training.run_training import run_training
    from unisyn_v2.training.settings import TrainerSettings

    use_work_folder(spec.work)
    from unisyn_v2.dataset.ids import dataset_name_from_id

    name = dataset_name_from_id(spec.dataset_id, DATASET_NAME)
    if (text_encoder_artifact_folder(results_dir(), name, "unisynPlans") / "config.json").is_file():
        return
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=2, validation_iterations=1, num_workers=0,
                               final_validation=False)
    started = time.perf_counter()
    run_training(spec.dataset_id, "neuroclip", device=device, settings=settings)
    logger.info("stage 1 (2 iterations) in %.1f s", time.perf_counter() - started)


def trainer_tasks(trainer: str) -> tuple[tuple[str, str], ...] | None:
    """Single-task trainers (the U-Net) get T1w -> CT; the others train every direction."""
    return (("T1w", "CT"),) if trainer in ("unet", "gfm_task") else None


def ensure_model(spec: DataSpec, trainer: str, configuration: str, device: str, iterations: int = 2) -> Path:
    """A model folder with ``fold_0/checkpoint_final.pth`` after ``iterations`` training steps."""
    from unisyn_v2.training.run_training import build_trainer
    from unisyn_v2.training.settings import TrainerSettings

    use_work_folder(spec.work)
    if trainer != "unet":
        ensure_text_encoder(spec, device)
    settings = TrainerSettings(num_epochs=1, iterations_per_epoch=iterations, validation_iterations=1, num_workers=0,
                               final_validation=False, tasks=trainer_tasks(trainer))
    instance = build_trainer(spec.dataset_id, trainer, 0, configuration, device=device, settings=settings)
    if not (instance.fold_folder / "checkpoint_final.pth").is_file():
        started = time.perf_counter()
        instance.run()
        logger.info("%s %s: %d training iterations in %.1f s", trainer, configuration, iterations, time.perf_counter() - started)
    return instance.model_folder
