"""Finding a trained model folder and its folds, and loading one fold for prediction.

The folder name and files follow :mod:`unisyn_v2.contracts.model_layout`; a fold is loaded by
:func:`unisyn_v2.models.folder.load_trained_model`, which never imports code named in the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unisyn_v2.contracts.model_layout import FINAL_CHECKPOINT, NAME_SEPARATOR, ModelFolderName, ModelLayout
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.models.folder import load_trained_model
from unisyn_v2.models.registry import UnknownTrainerError, trainer_dotted_path
from unisyn_v2.paths import results_dir

DEFAULT_CHECKPOINT = FINAL_CHECKPOINT


def find_model_folder(dataset: str | int, trainer: str, configuration: str, plans_name: str = "unisynPlans") -> Path:
    """``results/<Dataset>/<Trainer>[_<tasks>]__<plans>__<config>``; ``trainer``: short name, class name or dotted path."""
    try:
        class_name = trainer_dotted_path(trainer).rpartition(":")[2].rpartition(".")[2]
    except UnknownTrainerError:
        class_name = trainer
    root = results_dir() / resolve_dataset_name(dataset)
    folders = sorted(p for p in root.glob(f"*{NAME_SEPARATOR}{plans_name}{NAME_SEPARATOR}{configuration}") if p.is_dir()) \
        if root.is_dir() else []
    matches = [p for p in folders if ModelFolderName.parse(p.name).belongs_to(class_name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        available = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_dir()) if root.is_dir() else "none"
        raise FileNotFoundError(f"no model folder for trainer {trainer!r} ({class_name}), plans {plans_name}, configuration "
                                f"{configuration} in {root} (available: {available}); train it first or pass -m MODEL_FOLDER")
    raise LookupError(f"trainer {trainer!r} matches several model folders ({', '.join(p.name for p in matches)}); pass -m")


def available_folds(model_folder: Path, checkpoint_name: str = DEFAULT_CHECKPOINT) -> list[str]:
    """The default ensemble: numbered folds holding the checkpoint, else ``all`` when it holds it."""
    return ModelLayout(model_folder).folds_holding(checkpoint_name)


def load_fold(model_folder: Path, fold: int | str, checkpoint_name: str, device: torch.device) -> tuple[Any, Any, dict[str, Any], Plans]:
    """(network, conditioner, trainer_info, plans) of one fold, the network on ``device`` in eval mode."""
    return load_trained_model(model_folder, fold, checkpoint_name, device)
