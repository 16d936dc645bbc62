"""Final validation of a fold: every held-out case and task through the full sliding-window predictor.

For each validation case and each (source, target) task it holds (within the task filter), the whole
preprocessed source volume is synthesised (Gaussian-blended tiles of the training patch size) and
compared with the ground truth inside the brain mask (and in the head mask: ``head_*``; for CT the bone, > 300 HU),
on the preprocessed grid in output units, predictions limited to the modality's physical range: every
array goes through the target image's inverse normalisation first (HU for CT, SUV or SUVR for PET, the
image's own normalised scale for MRI), so a nonlinear scheme (the CT brain window) cannot change what
is measured. Headline metrics (``psnr``, ``ssim``, ``mae``) use the ``reference`` protocol: both images
on the reference's brain 0.5-99.5th percentile range, one affine map, so a smooth prediction is not
shifted by the noise in the reference's minimum; ``papers_psnr`` / ``papers_ssim`` add the papers'
per-image scaling (whole-image statistics, reference copied outside the mask) for comparison.
Two baselines are scored the same way: identity (the normalised source taken as the prediction) and
histogram matching (the source's brain quantiles mapped onto the mean brain quantiles of the target
modality over training cases; no peeking at the ground truth). Results go to
``fold_N/validation/summary.json`` (per case and mean per task) with one example PNG per task.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from unisyn_v2.contracts.model_layout import ModelLayout
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.evaluation.figures import save_comparison_figure
from unisyn_v2.evaluation.metrics import bone_metrics
from unisyn_v2.evaluation.protocols import evaluate_pair, lesion_psnr
from unisyn_v2.models.rendering import finish_rendered_volume, rendering_network
from unisyn_v2.models.sliding_window import sliding_window_predict
from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.slice_adapter import volume_network
from unisyn_v2.preprocessing.case_preprocessor import normalizer_for
from unisyn_v2.preprocessing.case_store import load_preprocessed_case
from unisyn_v2.preprocessing.normalization import NormalizationParameters
from unisyn_v2.training.data.cases import description_from_channel
from unisyn_v2.training.settings import TrainerSettings, task_key

class SynthesisTrainer(Protocol):
    """What validation reads of a synthesis trainer (a protocol, so this module does not import the trainer,
    which calls it)."""

    plans: Plans
    network: torch.nn.Module
    conditioner: Any
    settings: TrainerSettings
    layout: ModelLayout
    fold: int | str
    configuration: str
    dataset_name: str
    data_folder: Path
    train_cases: list[str]
    val_cases: list[str]
    tasks: Any
    patch_size: tuple[int, ...]
    batch_size: int
    is_slab: bool
    device: torch.device
    current_epoch: int

logger = logging.getLogger(__name__)
QUANTILES = np.linspace(0.0, 1.0, 257)
METRICS = ("psnr", "ssim", "mae", "papers_psnr", "papers_ssim")
LESION_METRICS = ("lesion_psnr", "normal_psnr", "lesion_gap_db")  # only cases with lesions have them
MAX_REFERENCE_CASES = 10


def predict_volume(network: torch.nn.Module, conditioner: Any, source: np.ndarray, source_description: ImageDescription,
                   target_description: ImageDescription, patch_size: tuple[int, ...], device: torch.device,
                   tile_batch_size: int = 4, step_size: float = 0.5, mask: np.ndarray | None = None,
                   plans: Any = None, z_step: int | None = None) -> np.ndarray:
    """Synthesise a whole (Z, Y, X) volume with a volume-level network ((B, 1, *patch) in and out).

    ``z_step=1`` places a 2.5D slab at every slice, as the predictor does, so validation scores the seam-free blend.

    A qMRI network's rendered MR volume is put on the contract's scale in ``mask`` with ``plans``' normaliser."""
    device = torch.device(device)
    source_text = conditioner.embed([source_description]) if conditioner is not None else None
    target_text = conditioner.embed([target_description]) if conditioner is not None else None

    def predictor(tiles: torch.Tensor) -> torch.Tensor:
        n = tiles.shape[0]
        s = source_text.expand(n, -1) if source_text is not None else None
        t = target_text.expand(n, -1) if target_text is not None else None
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            return network(tiles, s, t).synthesis.float()

    image = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None]
    result = sliding_window_predict(image, predictor, patch_size, step_size=step_size, tile_batch_size=tile_batch_size,
                                    device=device, z_step=z_step)
    if plans is not None and rendering_network(network) is not None:
        return finish_rendered_volume(network, result[0].numpy(), mask, target_description, plans)
    return result[0].numpy()


def intensity_quantiles(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Quantiles of the brain intensities (the whole image when the mask is empty)."""
    values = image[mask > 0] if np.any(mask) else image.ravel()
    return np.quantile(values.astype(np.float64), QUANTILES)


def histogram_match(source: np.ndarray, mask: np.ndarray, reference_quantiles: np.ndarray) -> np.ndarray:
    """Map the source's brain quantiles onto ``reference_quantiles`` (piecewise linear, monotone)."""
    source_q = intensity_quantiles(source, mask)
    source_q = source_q + np.arange(len(source_q)) * 1e-9 * max(1.0, float(np.ptp(source_q)))  # strictly increasing
    return np.interp(source, source_q, reference_quantiles).astype(np.float32)


def evaluate_in_mask(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray,
                     head: np.ndarray | None = None, is_ct: bool = False,
                     lesion: np.ndarray | None = None) -> dict[str, float]:
    """``reference``-protocol PSNR / SSIM / MAE in the brain, plus the papers protocol's PSNR / SSIM (with
    the reference copied outside the brain, so only the brain differs).

    With ``head``: ``head_psnr`` / ``head_ssim`` / ``head_mae`` under the same protocol in the head mask. For CT
    (arrays in HU) also the SynthRAD view of the head (``head_mae_hu``, ``head_psnr_synthrad``) and the bone
    (> 300 HU): ``bone_dice`` and ``bone_mae`` (HU, in the reference's bone). With ``lesion`` (a case whose
    dataset.json names a lesion_mask, with lesions): ``lesion_psnr``, ``normal_psnr`` and ``lesion_gap_db``."""
    inside = mask > 0
    region = mask if inside.any() else None
    values = evaluate_pair(reference, prediction, "reference", region)
    candidate = np.where(inside, prediction, reference) if inside.any() else prediction
    papers = evaluate_pair(reference, candidate, "papers", region)
    result = {"psnr": float(values["psnr"]), "ssim": float(values["ssim"]), "mae": float(values["mae"]),
              "papers_psnr": float(papers["psnr"]), "papers_ssim": float(papers["ssim"])}
    if head is not None and np.any(head):
        in_head = evaluate_pair(reference, prediction, "reference", head)
        result.update({f"head_{k}": float(in_head[k]) for k in ("psnr", "ssim", "mae")})
        if is_ct:
            synthrad = evaluate_pair(reference, prediction, "synthrad", head)
            result.update({"head_mae_hu": float(synthrad["mae"]), "head_psnr_synthrad": float(synthrad["psnr"]),
                           **{k: float(v) for k, v in bone_metrics(reference, prediction, mask=head).items()}})
    if lesion is not None and np.any(lesion):
        result.update(lesion_psnr(reference, prediction, mask, lesion))
    return result


def to_output_units(array: np.ndarray, channel: dict[str, Any], trainer: SynthesisTrainer) -> np.ndarray:
    """A normalised array in the units of the image ``channel`` describes (case properties' channel entry)."""
    normalizer = normalizer_for(trainer.plans, channel["modality"])
    return normalizer.inverse(array, NormalizationParameters.from_dict(channel["normalization"]))


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _mean(rows: list[dict[str, float]]) -> dict[str, float | str]:
    """Mean of every metric all rows hold (head and bone metrics exist only where a head mask / CT does;
    a bone MAE is NaN for a reference without bone and left out of its mean); lesion metrics: the mean over the
    cases with lesions."""
    if not rows:
        return {}
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    keys += [k for k in LESION_METRICS if k not in keys and any(k in r for r in rows)]
    means = {}
    for k in keys:
        values = [float(r[k]) for r in rows if k in r and not (k == "bone_mae" and math.isnan(float(r[k])))]
        means[k] = _json_number(float(np.mean(values))) if values else "nan"
    return means


def _reference_quantiles(trainer: SynthesisTrainer) -> dict[str, np.ndarray]:
    """Mean brain quantiles of each modality over (at most MAX_REFERENCE_CASES) training cases."""
    collected: dict[str, list[np.ndarray]] = {}
    for case_id in trainer.train_cases:
        case = load_preprocessed_case(trainer.data_folder, case_id, mmap=True)
        for channel, modality in enumerate(case.modalities):
            if len(collected.setdefault(modality, [])) < MAX_REFERENCE_CASES:
                collected[modality].append(intensity_quantiles(np.asarray(case.data[channel]), np.asarray(case.mask)))
    return {m: np.mean(q, axis=0) for m, q in collected.items()}


def _allowed(trainer: SynthesisTrainer, source: ImageDescription, target: ImageDescription) -> bool:
    """A pair to validate: another modality, or the same one at another protocol (as the pair sampler)."""
    if source.modality.lower() == target.modality.lower() and source.prompt() == target.prompt():
        return False
    return trainer.tasks is None or any(s.lower() == source.modality.lower() and t.lower() == target.modality.lower()
                                        for s, t in trainer.tasks)


def run_final_validation(trainer: SynthesisTrainer) -> dict[str, Any]:
    """Validate ``trainer``'s current network on its fold's validation cases; write and return the summary."""
    started = time.perf_counter()
    out_dir = trainer.layout.validation(trainer.fold)
    network = volume_network(trainer.network, trainer.is_slab).eval()
    references = _reference_quantiles(trainer)
    cases = trainer.val_cases[: trainer.settings.max_validation_cases or None]
    per_task: dict[str, list[dict[str, Any]]] = {}
    figure_cap, figures = trainer.settings.validation_figures, 0
    for case_id in cases:
        case = load_preprocessed_case(trainer.data_folder, case_id, mmap=False)
        channels = case.properties["channels"]
        descriptions = [description_from_channel(c, case.properties.get("subject") or {}) for c in channels]
        spacing = case.properties.get("target_spacing_zyx") or (1.0, 1.0, 1.0)
        for s, source_modality in enumerate(case.modalities):
            for t, target_modality in enumerate(case.modalities):
                if s == t or not _allowed(trainer, descriptions[s], descriptions[t]):
                    continue
                key = task_key(source_modality, target_modality)
                reference, source = case.data[t], case.data[s]
                with torch.no_grad():
                    prediction = predict_volume(network, trainer.conditioner, source, descriptions[s], descriptions[t],
                                                trainer.patch_size, trainer.device, tile_batch_size=2 * trainer.batch_size,
                                                mask=case.mask > 0, plans=trainer.plans,
                                                z_step=1 if trainer.is_slab else None)
                candidates = {"model": prediction, "identity": source}
                if target_modality in references:
                    candidates["histogram_matching"] = histogram_match(source, case.mask, references[target_modality])
                reference_units = to_output_units(reference, channels[t], trainer)
                limit = normalizer_for(trainer.plans, target_modality).limit_to_physical
                is_ct = get_modality(target_modality).family is ModalityFamily.CT
                # the files tell apart the pairs of a case holding one modality at several protocols
                row: dict[str, Any] = {"case_id": case_id, "source": channels[s].get("file"),
                                       "target": channels[t].get("file")}
                for name, candidate in candidates.items():  # all in the target's units (its normalised space in)
                    row[name] = evaluate_in_mask(reference_units, limit(to_output_units(candidate, channels[t], trainer)),
                                                 case.mask, case.head, is_ct, case.lesion)
                if key not in per_task and (figure_cap is None or figures < figure_cap):
                    figures += 1
                    name = f"{case_id}_{source_modality}_to_{target_modality}.png"
                    save_comparison_figure(out_dir / name, source, prediction, reference, spacing_zyx=spacing,
                                           suptitle=f"{key} {case_id}: PSNR {row['model']['psnr']:.2f} dB")
                per_task.setdefault(key, []).append(row)
                logger.info("validation %s %s%s: PSNR %.2f (identity %.2f)", case_id, key,
                            "" if case.modalities.count(source_modality) == case.modalities.count(target_modality) == 1
                            else f" ({row['source']} -> {row['target']})", row["model"]["psnr"], row["identity"]["psnr"])
    summary = _summarise(trainer, per_task, time.perf_counter() - started)
    write_json_atomic(out_dir / "summary.json", summary)
    for key, task in summary["tasks"].items():
        logger.info("validation %s: mean PSNR %s, SSIM %s, MAE %s (identity PSNR %s, histogram matching PSNR %s)", key,
                    task["mean"].get("psnr"), task["mean"].get("ssim"), task["mean"].get("mae"),
                    task["baselines"]["identity"].get("psnr"), task["baselines"].get("histogram_matching", {}).get("psnr"))
    return summary


def _summarise(trainer: SynthesisTrainer, per_task: dict[str, list[dict[str, Any]]], seconds: float) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for key, rows in sorted(per_task.items()):
        baselines = {name: _mean([r[name] for r in rows if name in r]) for name in ("identity", "histogram_matching")}
        model = _mean([r["model"] for r in rows])
        best_baseline = max((float(b["psnr"]) for b in baselines.values() if b), default=-math.inf)
        tasks[key] = {"mean": model, "baselines": baselines, "num_cases": len({r["case_id"] for r in rows}),
                      "num_pairs": len(rows),  # more than num_cases where a case holds a modality at several protocols
                      "beats_baselines": float(model["psnr"]) > best_baseline,
                      "cases": [{"case_id": r["case_id"], "source": r["source"], "target": r["target"],
                                 **{n: {k: _json_number(v) for k, v in r[n].items()}
                                    for n in ("model", "identity", "histogram_matching") if n in r}}
                                for r in rows]}
    def floats(means: dict[str, Any]) -> dict[str, float]:
        return {k: float(means[k]) for k in METRICS}

    overall = {"model": _mean([floats(t["mean"]) for t in tasks.values() if t["mean"]])}
    for name in ("identity", "histogram_matching"):
        overall[name] = _mean([floats(t["baselines"][name]) for t in tasks.values() if t["baselines"].get(name)])
    return {"protocol": "reference", "papers_metrics": "papers_psnr, papers_ssim: papers protocol", "space": "output units (preprocessed grid)", "region": "brain mask",
            "head_metrics": "head_*: the same protocol in the head mask; CT: head_mae_hu / head_psnr_synthrad (SynthRAD "
                            "protocol in the head), bone_dice / bone_mae (> 300 HU)",
            "trainer": type(trainer).__name__, "dataset": trainer.dataset_name, "configuration": trainer.configuration,
            "fold": str(trainer.fold), "epoch": trainer.current_epoch, "num_cases": len({r["case_id"] for rows in per_task.values() for r in rows}),
            "seconds": round(seconds, 1), "mean_over_tasks": overall, "tasks": tasks}
