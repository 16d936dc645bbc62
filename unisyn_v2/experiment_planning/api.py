"""The plan-and-preprocess pipeline as plain functions (the CLI is a thin layer over these)."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, replace
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unisyn_v2.dataset.description import DATASET_JSON, DatasetError, load_dataset_description
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.experiment_planning.fingerprint import FINGERPRINT_FILE, extract_fingerprint, raw_signature
from unisyn_v2.experiment_planning.planner import DEFAULT_PLANS_NAME, detect_gpu_memory_gb, plan_experiment
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.experiment_planning.splits import ensure_splits
from unisyn_v2.io_utils import copy_file_atomic, read_json
from unisyn_v2.paths import preprocessed_dir, raw_dir
from unisyn_v2.preprocessing.run import preprocess_dataset

logger = logging.getLogger(__name__)


def dataset_folders(dataset: str | int) -> tuple[str, Path, Path]:
    """(name, raw folder, preprocessed folder) of a dataset id or name."""
    name = resolve_dataset_name(dataset)
    return name, raw_dir() / name, preprocessed_dir() / name


def verify(dataset: str | int) -> None:
    """Raise :class:`DatasetError` listing every problem of the raw dataset."""
    _name, raw, _pre = dataset_folders(dataset)
    problems = verify_dataset_integrity(raw)
    if problems:
        raise DatasetError(raw / DATASET_JSON, problems)


def fingerprint_dataset(dataset: str | int, num_processes: int = 2, clean: bool = False, verify_integrity: bool = False, progress: bool = True) -> dict[str, Any]:
    """Verify (when asked, or when the raw data changed) and fingerprint a dataset."""
    _name, raw, pre = dataset_folders(dataset)
    existing = pre / FINGERPRINT_FILE
    if verify_integrity or clean or not existing.is_file() or _raw_changed(raw, existing):
        verify(dataset)
    fingerprint = extract_fingerprint(raw, pre, num_processes=num_processes, clean=clean, progress=progress)
    pre.mkdir(parents=True, exist_ok=True)
    copy_file_atomic(raw / DATASET_JSON, pre / DATASET_JSON)
    return fingerprint


def _raw_changed(raw: Path, fingerprint: Path) -> bool:
    """Whether the raw files differ from those the fingerprint was computed on (then they are verified again)."""
    try:
        return read_json(fingerprint).get("raw_signature") != raw_signature(load_dataset_description(raw, read_sidecars=False))
    except (ValueError, OSError, AttributeError):
        return True


def resolve_planner(planner: str) -> tuple[str, Callable[..., Plans]]:
    """A preset name (cpu, small, medium, large, paper, auto) or a dotted path ``package.module:function``."""
    if ":" not in planner:
        return planner, plan_experiment
    module_name, _, attribute = planner.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"planner {planner!r} cannot be imported ({error}); use a preset name or 'package.module:function'") from None
    return "auto", function


@dataclass(frozen=True)
class PlanChoices:
    """Decisions the user makes over the preset's (``unisyn_plan_and_preprocess`` options); None keeps the preset's."""

    loss_region: dict[str, str] | None = None  # family -> brain | head, merged over the default
    neuroclip_image_encoder: str | None = None  # cnn | vit
    lesion_oversample: float | None = None  # share of patches centred on a lesion (cases with lesion masks)
    lesion_weight: float | None = None  # synthesis-loss weight inside lesions
    decoder_3d: str | None = None  # the 3D configuration's decoder: conv | liif (TUMSyn's implicit decoder)

    def apply(self, plans: Plans) -> Plans:
        """The plans with these choices written in, validated as a plans file is on load."""
        training, neuroclip = plans.training, plans.neuroclip
        if self.loss_region:
            training = replace(training, loss_region={**training.loss_region, **self.loss_region})
        if self.lesion_oversample is not None:
            training = replace(training, lesion_oversample=float(self.lesion_oversample))
        if self.lesion_weight is not None:
            training = replace(training, lesion_weight=float(self.lesion_weight))
        if self.neuroclip_image_encoder:
            neuroclip = replace(neuroclip, image_encoder=self.neuroclip_image_encoder)
        configurations = dict(plans.configurations)
        if self.decoder_3d and "3d" in configurations:  # LIIF queries a z axis, which a 2.5D slab does not have
            config = configurations["3d"]
            configurations["3d"] = replace(config, network_kwargs={**config.network_kwargs, "decoder": self.decoder_3d})
        elif self.decoder_3d:
            raise ValueError("--decoder_3d needs the 3d configuration: plan with -c 3d (or the default 2.5d 3d)")
        return Plans.from_dict(replace(plans, training=training, neuroclip=neuroclip, configurations=configurations).to_dict(),
                               source="plan options")


def plan_dataset(dataset: str | int, planner: str = "auto", gpu_memory_gb: float | None = None, plans_name: str = DEFAULT_PLANS_NAME,
                 target_spacing: Sequence[float] | None = None, configurations: Sequence[str] = ("2.5d", "3d"),
                 choices: PlanChoices | None = None) -> Plans:
    """Write ``<plans_name>.json`` and ``splits_final.json`` from the fingerprint."""
    _name, raw, pre = dataset_folders(dataset)
    if not (pre / FINGERPRINT_FILE).is_file():
        raise FileNotFoundError(f"{pre / FINGERPRINT_FILE} is missing; run unisyn_extract_fingerprint -d {dataset} first")
    fingerprint = read_json(pre / FINGERPRINT_FILE)
    preset, function = resolve_planner(planner)
    memory = gpu_memory_gb if gpu_memory_gb is not None else detect_gpu_memory_gb()
    plans = function(fingerprint, preset_name=preset, gpu_memory_gb=memory, plans_name=plans_name,
                     target_spacing=target_spacing, configurations=configurations)
    if choices is not None:
        plans = choices.apply(plans)
    plans.save(pre / f"{plans_name}.json")
    ensure_splits(pre, raw, list(fingerprint["cases"]))
    logger.info("wrote %s (preset %s)", pre / f"{plans_name}.json", plans.preset)
    return plans


def load_plans(dataset: str | int, plans_name: str = DEFAULT_PLANS_NAME) -> Plans:
    """Read a dataset's plans, with a hint when planning has not run."""
    _name, _raw, pre = dataset_folders(dataset)
    path = pre / f"{plans_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run unisyn_plan_and_preprocess -d {dataset} first")
    return Plans.load(path)


def preprocess(dataset: str | int, plans_name: str = DEFAULT_PLANS_NAME, num_processes: int = 2, progress: bool = True) -> Path:
    """Preprocess every case with the dataset's plans."""
    _name, raw, pre = dataset_folders(dataset)
    return preprocess_dataset(raw, load_plans(dataset, plans_name), pre, num_processes=num_processes, progress=progress)


def plan_and_preprocess(dataset: str | int, planner: str = "auto", gpu_memory_gb: float | None = None, num_processes: int = 2,
                        clean: bool = False, verify_integrity: bool = False, run_preprocessing: bool = True,
                        plans_name: str = DEFAULT_PLANS_NAME, target_spacing: Sequence[float] | None = None,
                        configurations: Sequence[str] = ("2.5d", "3d"), progress: bool = True,
                        choices: PlanChoices | None = None) -> Plans:
    """Fingerprint, plan and preprocess in one go."""
    load_dataset_description(dataset_folders(dataset)[1])  # schema errors before any work
    fingerprint_dataset(dataset, num_processes, clean, verify_integrity, progress)
    plans = plan_dataset(dataset, planner, gpu_memory_gb, plans_name, target_spacing, configurations, choices)
    if run_preprocessing:
        preprocess(dataset, plans_name, num_processes, progress)
    return plans
