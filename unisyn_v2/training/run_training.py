"""Training as a function: resolve dataset, plans, trainer, device and folders, then run the trainer."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.experiment_planning.plans import Plans
from unisyn_v2.paths import preprocessed_dir, results_dir
from unisyn_v2.training.registry import resolve_trainer_class
from unisyn_v2.training.settings import TrainerSettings
from unisyn_v2.training.trainer_base import TrainerBase

logger = logging.getLogger(__name__)
DEFAULT_PLANS_NAME = "unisynPlans"
DEVICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is an error."""
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to this torch build (use cpu or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps: MPS is not available on this machine (use cpu or auto)")
    return torch.device(name)


def parse_fold(fold: int | str | None) -> int | str | None:
    """``0``..``n``, ``"3"`` or ``"all"``."""
    if fold is None or fold == "all":
        return fold
    try:
        value = int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold must be an integer (0-4) or 'all', got {fold!r}") from None
    if value < 0:
        raise ValueError(f"fold must be >= 0, got {value}")
    return value


def build_trainer(dataset: str | int, trainer: str, fold: int | str | None = None, configuration: str | None = None,
                  plans_name: str | None = None, device: str | torch.device = "auto",
                  settings: TrainerSettings | None = None) -> TrainerBase:
    """Create (without running) the trainer for a dataset: results/<Dataset>/<Trainer>__<plans>__<config>."""
    dataset_name = resolve_dataset_name(dataset)
    preprocessed = preprocessed_dir() / dataset_name
    plans_name = plans_name or DEFAULT_PLANS_NAME
    plans_path = preprocessed / f"{plans_name}.json"
    if not plans_path.is_file():
        raise FileNotFoundError(f"{plans_path} is missing; run unisyn_plan_and_preprocess -d {dataset} first")
    plans = Plans.load(plans_path)
    trainer_class = resolve_trainer_class(trainer)
    configuration = configuration or trainer_class.default_configuration or plans.default_configuration
    fold = parse_fold(fold)
    fold = trainer_class.default_fold if fold is None else fold
    settings = settings or TrainerSettings()
    folder = results_dir() / dataset_name / trainer_class.model_folder_name(plans_name, configuration, settings)
    resolved = resolve_device(device)
    return trainer_class(plans, configuration, fold, dataset_name, preprocessed, folder, resolved, settings)


def run_training(dataset: str | int, trainer: str, fold: int | str | None = None, configuration: str | None = None,
                 plans_name: str | None = None, device: str | torch.device = "auto",
                 settings: TrainerSettings | None = None) -> TrainerBase:
    """Build and run a trainer (train, resume with ``settings.continue_training``, or ``validation_only``)."""
    instance = build_trainer(dataset, trainer, fold, configuration, plans_name, device, settings)
    logger.info("training %s -> %s", type(instance).__name__, Path(instance.fold_folder))
    instance.run()
    return instance
