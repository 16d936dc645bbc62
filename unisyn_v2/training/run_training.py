"""Training as a function: resolve dataset, plans, trainer, device and folders, then run the trainer.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) :func:`run_training` joins the process group for
the run; :func:`run_training_distributed` starts the ranks itself (``unisyn_train ... --num_gpus N``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from unisyn_v2.models.devices import resolve_device
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.paths import preprocessed_dir, results_dir
from unisyn_v2.training.distributed import distributed_session, launch, local_device
from unisyn_v2.models.registry import resolve_command_line_trainer
from unisyn_v2.training.settings import TrainerSettings
from unisyn_v2.training.trainer_base import TrainerBase

logger = logging.getLogger(__name__)
DEFAULT_PLANS_NAME = "unisynPlans"
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
    """Create (without running) the trainer for a dataset: results/<Dataset>/<Trainer>__<plans>__<config>.

    ``trainer`` comes from the caller (command line or code, never a file), so a ``package.module:Class``
    is imported (:func:`~unisyn_v2.models.registry.resolve_command_line_trainer`).
    """
    dataset_name = resolve_dataset_name(dataset)
    preprocessed = preprocessed_dir() / dataset_name
    plans_name = plans_name or DEFAULT_PLANS_NAME
    plans_path = preprocessed / f"{plans_name}.json"
    if not plans_path.is_file():
        raise FileNotFoundError(f"{plans_path} is missing; run unisyn_plan_and_preprocess -d {dataset} first")
    plans = Plans.load(plans_path)
    trainer_class = resolve_command_line_trainer(trainer)  # the caller's own name (command line or code), never a file's
    configuration = configuration or trainer_class.default_configuration or plans.default_configuration
    fold = parse_fold(fold)
    fold = trainer_class.default_fold if fold is None else fold
    settings = settings or TrainerSettings()
    folder = results_dir() / dataset_name / trainer_class.model_folder_name(plans_name, configuration, settings)
    resolved = local_device(resolve_device(device))
    return trainer_class(plans, configuration, fold, dataset_name, preprocessed, folder, resolved, settings)


def run_training(dataset: str | int, trainer: str, fold: int | str | None = None, configuration: str | None = None,
                 plans_name: str | None = None, device: str | torch.device = "auto",
                 settings: TrainerSettings | None = None) -> TrainerBase:
    """Build and run a trainer (train, resume with ``settings.continue_training``, or ``validation_only``)."""
    with distributed_session(local_device(resolve_device(device))):
        instance = build_trainer(dataset, trainer, fold, configuration, plans_name, device, settings)
        logger.info("training %s -> %s", type(instance).__name__, Path(instance.fold_folder))
        instance.run()
    return instance


def _run_rank(*args: object) -> None:
    run_training(*args)  # type: ignore[arg-type]  # the trainer object stays in the rank


def run_training_distributed(num_processes: int, dataset: str | int, trainer: str, fold: int | str | None = None,
                             configuration: str | None = None, plans_name: str | None = None,
                             device: str | torch.device = "auto", settings: TrainerSettings | None = None,
                             verbose: bool = False) -> None:
    """:func:`run_training` in ``num_processes`` ranks on this machine: one per GPU, or gloo on the CPU."""
    if num_processes < 1:
        raise ValueError(f"--num_gpus must be >= 1, got {num_processes}")
    resolved = resolve_device(device)
    if resolved.type == "cuda" and num_processes > torch.cuda.device_count():
        raise RuntimeError(f"--num_gpus {num_processes} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if resolved.type == "mps":
        raise ValueError("--num_gpus needs CUDA devices or --device cpu (gloo); MPS is not supported")
    if num_processes == 1:
        run_training(dataset, trainer, fold, configuration, plans_name, resolved, settings)
        return
    # fork starts CPU ranks in a fraction of spawn's time (no re-import); CUDA needs fresh interpreters
    start_method = "fork" if resolved.type == "cpu" and sys.platform.startswith("linux") else "spawn"
    launch(num_processes, _run_rank, dataset, trainer, fold, configuration, plans_name, str(resolved), settings,
           verbose=verbose, start_method=start_method)
