"""The end-to-end demo: phantom -> plan/preprocess -> NeuroCLIP -> GFM -> predict held-out cases -> evaluate.

Every step calls the same Python API as the command lines, and every step resumes: a second run
reuses the phantom, the preprocessed data and finished trainings.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unisyn_v2.dataset.description import load_dataset_description
from unisyn_v2.dataset.ids import dataset_name_from_id
from unisyn_v2.dataset.image_io import read_image
from unisyn_v2.evaluation.evaluate import evaluate_folders
from unisyn_v2.evaluation.figures import save_comparison_figure
from unisyn_v2.experiment_planning import api
from unisyn_v2.experiment_planning.splits import fold_cases
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor
from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.paths import preprocessed_dir, raw_dir
from unisyn_v2.phantom import generate_phantom_dataset
from unisyn_v2.training.checkpointing import find_resume_checkpoint
from unisyn_v2.training.distributed import distributed_session, local_device
from unisyn_v2.models.devices import resolve_device
from unisyn_v2.training.run_training import build_trainer
from unisyn_v2.training.settings import TrainerSettings
from unisyn_v2.training.trainer_base import TrainerBase

logger = logging.getLogger(__name__)

DEMO_TARGETS = ("FDG-PET", "CT")
# Every demo case holds all of these (a paired phantom), so every held-out case has both ground truths;
# NeuroCLIP learns all five, the GFM trains the demo's directions (T1w <-> FDG-PET, T1w <-> CT by its
# cyclic step) unless all_tasks: 20 directions do not converge in a few CPU minutes.
DEMO_MODALITIES = ("T1w", "T2w", "FLAIR", "CT", "FDG-PET")
DEMO_TASKS = tuple(("T1w", target) for target in DEMO_TARGETS)
# The plans' GFM schedule is sized for every direction of a dataset (the CPU plan: 100 epochs for 20); the
# demo's 4 directions beat both baselines within 60 epochs, which keeps the demo near 15 minutes on 2 cores.
DEMO_MAX_EPOCHS = 60


@dataclass
class DemoOptions:
    """How big the demo is; the defaults finish in minutes on 2 CPU cores."""

    dataset_id: int = 900
    name: str = "UniSynDemo"
    cases: int = 20
    seed: int = 0
    neuroclip_epochs: int | None = None  # None: the plans' schedule
    epochs: int | None = None  # None: the plans' schedule, at most DEMO_MAX_EPOCHS unless all_tasks
    iterations_per_epoch: int | None = None
    device: str = "auto"
    gpu_memory_gb: float | None = None
    planner: str = "auto"
    trainer: str = "gfm"
    all_tasks: bool = False  # train every direction between DEMO_MODALITIES, not only the demo's
    plan_choices: api.PlanChoices | None = None  # choices over the preset's (e.g. the loss region per family)
    output: Path = field(default_factory=lambda: Path("unisyn_demo_output"))


def _ensure_phantom(options: DemoOptions) -> Path:
    root = raw_dir() / dataset_name_from_id(options.dataset_id, options.name)
    if (root / "dataset.json").is_file():
        logger.info("reusing the phantom dataset %s", root)
        return root
    return generate_phantom_dataset(root, num_cases=options.cases, seed=options.seed, name=options.name, progress=True,
                                    modalities=DEMO_MODALITIES, complete=True)


def _held_out_inputs(raw_root: Path, case_ids: list[str], output: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A small input folder (dataset.json + T1w images and brain masks) of held-out cases, plus their ground truths."""
    description = load_dataset_description(raw_root)
    inputs = output / "inputs"
    cases, truths = [], {}
    for case_id in case_ids:
        case = description.case(case_id)
        t1 = next((image for image in case.images if image.modality == "T1w"), None)
        if t1 is None:
            continue
        (inputs / case_id).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(description.path_of(t1.file), inputs / t1.file)
        entry = {"id": case_id, "subject": case.subject.to_dict(), "images": [{"file": t1.file, "modality": "T1w", "metadata": t1.metadata.to_dict()}]}
        if case.brain_mask:  # the T1w is normalised on brain percentiles, as in training
            shutil.copyfile(description.path_of(case.brain_mask), inputs / case.brain_mask)
            entry["brain_mask"] = case.brain_mask
        cases.append(entry)
        truths[case_id] = {image.modality: description.path_of(image.file) for image in case.images}
        truths[case_id]["brain_mask"] = description.path_of(case.brain_mask) if case.brain_mask else None
    write_json_atomic(inputs / "dataset.json", {"name": "held-out inputs", "cases": cases})
    return inputs, truths


def _evaluate_target(target: str, predictions: Path, truths: dict[str, dict[str, Any]], output: Path) -> dict[str, Any] | None:
    references, masks = output / "references" / target, output / "masks"
    pairs = [(case_id, paths) for case_id, paths in truths.items() if target in paths]
    if not pairs:
        logger.warning("no held-out case has a ground-truth %s; skipping its evaluation", target)
        return None
    references.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for case_id, paths in pairs:
        shutil.copyfile(paths[target], references / f"{case_id}.nii.gz")
        if paths["brain_mask"] is not None:
            shutil.copyfile(paths["brain_mask"], masks / f"{case_id}.nii.gz")
        synthesis, geometry = read_image(predictions / f"{case_id}_{target}.nii.gz")
        save_comparison_figure(output / "figures" / f"{case_id}_T1w_to_{target}.png", read_image(paths["T1w"])[0], synthesis,
                               read_image(paths[target])[0], spacing_zyx=geometry.spacing_zyx, suptitle=f"{case_id}: T1w -> {target}")
    protocol = "synthrad" if target == "CT" else "reference"
    # The references are the phantom's own images, in the units the predictor writes (HU, SUV, x1000 MRI): a scale
    # gap here is a short demo's untrained model, not a unit mix-up, so it is scored rather than refused.
    summary = evaluate_folders(references, predictions, protocol, mask_dir=masks, modality=target,
                               output_file=output / f"summary_T1w_to_{target}.json", allow_scale_mismatch=True)
    return summary


HEAD_AND_BONE_METRICS = ("head_psnr", "head_mae_hu", "bone_dice", "bone_mae")


def validation_against_baselines(summary_path: Path) -> dict[str, dict[str, Any]]:
    """Per task of the trainer's final validation: PSNR of the model, identity and histogram matching (brain), and
    the model's head PSNR; for CT also its head MAE (HU) and bone Dice / MAE, which show the skull."""
    if not summary_path.is_file():
        return {}
    tasks = read_json(summary_path).get("tasks", {})
    return {task: {"model": values["mean"].get("psnr"),
                   **{name: b.get("psnr") for name, b in values["baselines"].items()},
                   "beats_baselines": values.get("beats_baselines"),
                   **{f"model_{k}": values["mean"][k] for k in HEAD_AND_BONE_METRICS if k in values["mean"]}}
            for task, values in tasks.items()}


def demo_epochs(options: DemoOptions, plans_epochs: int) -> int:
    """GFM epochs: the user's, else the plans' capped at DEMO_MAX_EPOCHS for the demo's 4 directions."""
    if options.epochs is not None:
        return options.epochs
    return plans_epochs if options.all_tasks else min(plans_epochs, DEMO_MAX_EPOCHS)


def _train_stage(dataset_id: int, trainer: str, fold: int | str | None, device: str, settings: TrainerSettings) -> TrainerBase:
    """Train one stage, resuming exactly when an earlier demo run left a checkpoint in its fold folder.

    Passing ``continue_training`` unconditionally made a fresh demo warn "--c: no checkpoint ... starting
    from scratch" for each stage, although nobody passed --c.
    """
    with distributed_session(local_device(resolve_device(device))):
        instance = build_trainer(dataset_id, trainer, fold, device=device, settings=settings)
        instance.settings.continue_training = find_resume_checkpoint(instance.fold_folder) is not None
        logger.info("training %s -> %s%s", type(instance).__name__, instance.fold_folder,
                    " (resuming the previous demo run)" if instance.settings.continue_training else "")
        instance.run()
    return instance


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run every stage; returns where the outputs went and the headline metrics."""
    output = options.output.resolve()
    raw_root = _ensure_phantom(options)
    plans = api.plan_and_preprocess(options.dataset_id, planner=options.planner, gpu_memory_gb=options.gpu_memory_gb,
                                    choices=options.plan_choices)
    stage1 = TrainerSettings(num_epochs=options.neuroclip_epochs)
    clip_trainer = _train_stage(options.dataset_id, "neuroclip", None, options.device, stage1)
    stage2 = TrainerSettings(num_epochs=demo_epochs(options, plans.training.num_epochs), iterations_per_epoch=options.iterations_per_epoch,
                             tasks=None if options.all_tasks else DEMO_TASKS)
    gfm_trainer = _train_stage(options.dataset_id, options.trainer, 0, options.device, stage2)
    splits = read_json(preprocessed_dir() / raw_root.name / "splits_final.json")
    _train, held_out = fold_cases(splits, 0, [])
    inputs, truths = _held_out_inputs(raw_root, held_out, output)
    predictor = UniSynPredictor.from_model_folder(gfm_trainer.model_folder, folds=[0], device=options.device,
                                                  settings=PredictionSettings(progress=False))
    report: dict[str, Any] = {"raw_dataset": str(raw_root), "plans": str(preprocessed_dir() / raw_root.name / f"{plans.plans_name}.json"),
                              "neuroclip_model": str(clip_trainer.model_folder), "synthesis_model": str(gfm_trainer.model_folder),
                              "predictions": {}, "evaluations": {}, "lowest_value": {}, "figures": str(output / "figures")}
    for target in DEMO_TARGETS:
        predictions = output / "predictions" / target
        predictor.predict([inputs], predictions, target, overwrite=True)
        report["predictions"][target] = str(predictions)
        summary = _evaluate_target(target, predictions, truths, output)
        if summary is not None:
            report["evaluations"][target] = {"summary": str(output / f"summary_T1w_to_{target}.json"), "mean": summary.get("mean")}
        # the physical range (CT >= -1024 HU, SUV >= 0) as written, for every held-out prediction
        report["lowest_value"][target] = min(float(read_image(p)[0].min()) for p in predictions.glob(f"*_{target}.nii.gz"))
    report["validation"] = validation_against_baselines(gfm_trainer.layout.validation(gfm_trainer.fold) / "summary.json")
    write_json_atomic(output / "demo_report.json", json.loads(json.dumps(report, default=str)))
    return report
