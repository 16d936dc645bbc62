"""Stage 1 (``unisyn_train <DATASET> neuroclip``): NeuroCLIP, the metadata text encoder pre-trained by
image-text contrastive learning, written as a stand-alone artifact for the synthesis trainers.

Model folder ``results/<Dataset>/NeuroCLIPTrainer__<plans>__neuroclip/``: ``fold_<f>/`` holds the
base trainer's checkpoints, ``training_log.txt``, ``progress.png`` and ``validation/summary.json``
(zero-shot retrieval and parameter sensitivity, refreshed every epoch and final at the end); the
artifact (``config.json``, ``tokenizer.json``, ``weights.pt``) goes to ``<model folder>/text_encoder/``.
Fold ``all`` (the default for stage 1) always writes it there; a numbered fold writes
``fold_N/text_encoder/`` and fills ``<model folder>/text_encoder/`` only when that is still empty.

Sizes come from the plans: the text transformer from ``plans.text_encoder`` (its ``embed_dim`` is the
embedding the GFM consumes, 1536 in the paper preset), the image side and schedule from
``plans.neuroclip``. The text encoder is bidirectional (``causal=False``): prompts are read, never
generated, and a value token needs to see its field name; pooling is at ``<eot>`` either way.

The image encoder is the 3D CNN (``VolumeImageEncoder3d`` with ``plans.neuroclip.image_widths``);
``plans.neuroclip.image_encoder = "vit"`` (``unisyn_plan_and_preprocess --neuroclip_image_encoder vit``) swaps
in TUMSyn's 3D ViT (16^3 tokens, 8^3 below 48^3 crops), written to the same model folder. Measured on
one CPU core, fold 0, 800 steps of the cpu preset (32^3 crops) on a 30-case phantom (10 modalities, 15
held-out images): CNN image->modality top-1 0.80, image->text 0.53 (3.7 min); ViT 0.67 and 0.40
(2.9 min; the CNN was at 0.87 / 0.53 after the same 2.9 min). On the 6-modality test phantom (36
held-out images, 300 steps) CNN 1.00 / 0.56, ViT 0.83 / 0.53. Hence the CNN is the default.

Optimiser: AdamW (CLIP's betas 0.9/0.98, weight decay 0.1 on matrices only); lr: linear warm-up over
the first 20% of the epochs, then cosine decay (TUMSyn: warm-up 20 of 100 epochs, then decay to 0).

Validation images are never training images: a numbered fold validates on its ``splits_final.json``
cases, fold ``all`` holds out ``holdout_fraction`` of the cases (:func:`holdout_cases`, by the hash of
the case id); ``fold_<f>/neuroclip_split.json`` records which (``--c`` and ``--val`` reuse it). Every
epoch the collapse guard (:mod:`unisyn_v2.training.collapse_guard`) checks the loss against chance and
the spread of a fixed probe of distinct training prompts and their images, rolls back with a lower lr
or stops with an error; ``fold_<f>/collapse_guard.json`` holds its per-epoch record. Its settings are
the class attribute ``collapse_guard_config``, overridable per run with
``TrainerSettings(extra={"collapse_guard": {...}})``.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from unisyn_v2.contracts.model_layout import TEXT_ENCODER_FOLDER, ModelFolderName
from unisyn_v2.experiment_planning.splits import SPLITS_FILE, fold_cases
from unisyn_v2.io_utils import finite_or_none, read_json, write_json_atomic
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.metadata.value_code import value_code_size
from unisyn_v2.networks.factory import build_neuroclip
from unisyn_v2.networks.neuroclip import MAX_LOGIT_SCALE, NeuroCLIP
from unisyn_v2.networks.text_artifact import NEUROCLIP_CONFIGURATION, save_text_encoder_artifact
from unisyn_v2.preprocessing.case_store import preprocessed_case_ids
from unisyn_v2.training.checkpointing import (
    CHECKPOINT_FORMAT_VERSION, load_checkpoint, load_network_weights, save_checkpoint_atomic,
)
from unisyn_v2.training.collapse_guard import (
    BAD, FAIL, GOOD, GOOD_CHECKPOINT, GRACE, GUARD_FILE, RECOVER, RESTORE_FINAL, UNJUDGED_FINAL, CollapseGuard,
    CollapseGuardConfig, EpochCheck, NeuroCLIPCollapseError, mean_pairwise_cosine, select_probe,
)
from unisyn_v2.training.neuroclip_data import (
    NeuroCLIPSample, WholeBrainCache, collect_samples, contrastive_loss, holdout_cases, typical_metadata,
)
from unisyn_v2.training.neuroclip_evaluation import (
    NUM_TEXT_CANDIDATES, image_to_modality_top1, image_to_text_top1, parameter_sensitivity, text_candidates,
)
from unisyn_v2.training.neuroclip_loaders import NeuroCLIPTrainLoader, NeuroCLIPValidationLoader, TokenCache, in_batch_accuracy
from unisyn_v2.training.schedule import EpochScheduler, WarmupCosineScheduler
from unisyn_v2.training.trainer_base import TrainerBase

logger = logging.getLogger(__name__)

_TEXT_FIELDS = ("manufacturer", "reconstruction_kernel", "tracer", "unit")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-/][A-Za-z0-9]+)*")
SPLIT_FILE = "neuroclip_split.json"


class NeuroCLIPTrainer(TrainerBase):
    """Contrastive pre-training of the metadata text encoder against a whole-brain 3D image encoder."""

    default_configuration: ClassVar[str | None] = NEUROCLIP_CONFIGURATION
    default_fold: ClassVar[int | str] = "all"
    best_metric_key: ClassVar[str] = "val_retrieval"
    best_metric_mode: ClassVar[str] = "max"
    causal_text: ClassVar[bool] = False
    supports_distributed: ClassVar[bool] = False  # contrastive batches would need a cross-rank gather; one process
    augment: ClassVar[bool] = True
    number_mode: ClassVar[str] = "digits"
    samples_per_class: ClassVar[int] = 1
    embed_batch_size: ClassVar[int] = 32
    holdout_fraction: ClassVar[float] = 0.2  # fold "all": share of the cases validated on, never trained on
    collapse_guard_config: ClassVar[CollapseGuardConfig] = CollapseGuardConfig()
    vit_layers: ClassVar[int] = 4  # depth of the ViT image tower (plans.neuroclip.image_encoder = vit)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        overrides = self.settings.extra.get("collapse_guard")
        if overrides is not None and not isinstance(overrides, dict):
            raise ValueError(f"TrainerSettings.extra['collapse_guard'] must be a dict of settings, got {overrides!r}")
        self.guard = CollapseGuard(self.collapse_guard_config.with_overrides(overrides),
                                   grace_epochs=max(1, int(round(self.num_epochs * self.plans.neuroclip.warmup_fraction))))
        self._guard_restored = False
        self.probe_samples: list[NeuroCLIPSample] = []
        self.split_record: dict[str, Any] = {}
        self.tokenizer: MetadataTokenizer | None = None
        self.train_samples: list[NeuroCLIPSample] = []
        self.val_samples: list[NeuroCLIPSample] = []
        self.all_prompts: list[str] = []
        self.typical: dict[str, dict[str, Any]] = {}
        self.cache: WholeBrainCache | None = None
        self.image_kwargs: dict[str, Any] = {}
        self.text_kwargs: dict[str, Any] = {}
        self.last_evaluation: dict[str, Any] | None = None
        self._data_ready = False

    @classmethod
    def model_folder_name(cls, plans_name: str, configuration: str, settings: Any = None) -> str:
        """``<Class>__<plans>__neuroclip`` whatever configuration's data it reads (both share one data folder)."""
        return str(ModelFolderName(cls.__name__, plans_name, NEUROCLIP_CONFIGURATION))

    # --------------------------------------------------------------- data
    @property
    def data_folder(self) -> Path:
        """The preprocessed case folder (shared by the 2.5d and 3d configurations)."""
        name = self.configuration if self.configuration in self.plans.configurations else None
        return self.preprocessed_folder / self.plans.configuration(name).data_identifier

    def _split(self) -> tuple[list[str], list[str]]:
        all_ids = preprocessed_case_ids(self.data_folder)
        if not all_ids:
            raise FileNotFoundError(f"no preprocessed cases in {self.data_folder}; run unisyn_plan_and_preprocess "
                                    f"-d {self.dataset_name} first")
        if self.fold == "all":
            return self._holdout_split(all_ids)
        splits_path = self.preprocessed_folder / SPLITS_FILE
        if not splits_path.is_file():
            raise FileNotFoundError(f"{splits_path} is missing; run unisyn_plan_and_preprocess -d {self.dataset_name} "
                                    "first (or train fold 'all')")
        return fold_cases(read_json(splits_path), self.fold, all_ids)

    def _holdout_split(self, all_ids: list[str]) -> tuple[list[str], list[str]]:
        """Fold "all": the recorded split when resuming or validating, else :func:`holdout_cases`."""
        recorded = self.fold_folder / SPLIT_FILE
        if (self.settings.continue_training or self.settings.validation_only) and recorded.is_file():
            known = set(all_ids)
            val = [c for c in read_json(recorded).get("val_cases", []) if c in known]
            if val:
                logger.info("NeuroCLIP: the held-out cases recorded in %s (%d)", recorded, len(val))
                return [c for c in sorted(all_ids) if c not in set(val)], val
        train, val = holdout_cases(all_ids, self.holdout_fraction)
        if set(train) & set(val):
            logger.warning("NeuroCLIP fold 'all' has a single case (%s): it validates on its training images",
                           train[0])
        return train, val

    def prepare_data(self) -> None:
        """Samples, typical metadata, tokenizer and image cache (idempotent; needed before the network)."""
        if self._data_ready:
            return
        train_ids, val_ids = self._split()
        if self.settings.max_validation_cases is not None:
            val_ids = val_ids[: self.settings.max_validation_cases]
        self.train_samples = collect_samples(self.data_folder, train_ids)
        self.val_samples = collect_samples(self.data_folder, val_ids)
        overlap = sorted(set(train_ids) & set(val_ids))
        self.split_record = {
            "fold": str(self.fold),
            "source": f"{SPLITS_FILE} fold {self.fold}" if self.fold != "all"
            else f"holdout_cases: {self.holdout_fraction:g} of the cases by SHA-1 of the case id",
            "holdout_fraction": self.holdout_fraction if self.fold == "all" else None,
            "num_train_cases": len(train_ids), "num_val_cases": len(val_ids),
            "num_train_images": len(self.train_samples), "num_val_images": len(self.val_samples),
            "validates_on_training_images": bool(overlap),
            "train_cases": sorted(train_ids), "val_cases": sorted(val_ids),
        }
        self.probe_samples = select_probe(self.train_samples, self.guard.config.probe_size)
        all_ids = sorted(set(train_ids) | set(val_ids) | set(preprocessed_case_ids(self.data_folder)))
        self.all_prompts = sorted({s.prompt for s in collect_samples(self.data_folder, all_ids)})
        self.typical = typical_metadata(self.train_samples)
        words = sorted({w for s in self.train_samples for f in _TEXT_FIELDS
                        for w in _WORD.findall(str(s.metadata.get(f) or "")) if len(w) >= 2})
        self.tokenizer = MetadataTokenizer.default(extra_words=words, number_mode=self.number_mode,
                                                   context_length=self.plans.text_encoder.context_length)
        for prompt in self.all_prompts:  # too-long prompts fail now, naming their length
            self.tokenizer.encode(prompt)
        n = self.plans.neuroclip
        jitter = max(1, min(n.image_size) // 16) if self.augment else 0
        self.cache = WholeBrainCache(self.data_folder, n.downsample, n.image_size, jitter)
        self._data_ready = True
        logger.info("NeuroCLIP data: %d training images (%d cases) in %d metadata classes, %d validation images "
                    "(%d held-out cases%s), %d modalities", len(self.train_samples), len(train_ids),
                    len({s.class_key for s in self.train_samples}), len(self.val_samples), len(val_ids),
                    ", the same as training" if overlap else "", len(self.typical))

    # ------------------------------------------------------------- hooks
    def plan_schedule(self) -> tuple[int, int, int, float]:
        """Stage-1 schedule from ``plans.neuroclip`` (validation batches from ``plans.training``)."""
        n = self.plans.neuroclip
        return n.num_epochs, n.iterations_per_epoch, self.plans.training.validation_iterations, n.initial_lr

    def image_encoder_kwargs(self, embed_dim: int) -> dict[str, Any]:
        """The image tower's kwargs: ``plans.neuroclip.image_encoder`` cnn, or vit (TUMSyn's 3D ViT over 16^3-voxel
        tokens, 8^3 when the crop is under 48 voxels per axis; width and heads of the text transformer)."""
        clip = self.plans.neuroclip
        if clip.image_encoder == "cnn":
            return {"kind": "cnn", "in_channels": 1, "widths": list(clip.image_widths), "embed_dim": embed_dim}
        size = list(clip.image_size)
        patch = 16 if min(size) >= 48 and all(s % 16 == 0 for s in size) else 8
        if any(s % patch for s in size):
            raise ValueError(f"NeuroCLIP image_size {size} must be divisible by the ViT patch size {patch}")
        t = self.plans.text_encoder
        return {"kind": "vit", "img_size": size, "patch_size": patch, "in_channels": 1, "width": t.width,
                "layers": self.vit_layers, "heads": t.heads, "embed_dim": embed_dim}

    def build_network(self) -> nn.Module:
        """NeuroCLIP from the plans: text transformer (plans.text_encoder) + image tower (plans.neuroclip)."""
        self.prepare_data()
        assert self.tokenizer is not None
        t = self.plans.text_encoder
        self.text_kwargs = {"vocab_size": self.tokenizer.vocab_size, "context_length": t.context_length,
                            "width": t.width, "layers": t.layers, "heads": t.heads, "embed_dim": t.embed_dim,
                            "causal": self.causal_text, "pad_token_id": self.tokenizer.pad_id,
                            "eot_token_id": self.tokenizer.eot_id}
        embed_dim = t.embed_dim
        if t.value_encoding:  # numbers by value (issue 16): the image side matches text + value code
            self.text_kwargs["value_encoding"] = {"tokenizer": self.tokenizer.to_dict(), "centres": t.value_centres,
                                                  "weight": t.value_weight}
            embed_dim += value_code_size(t.value_centres)
        self.image_kwargs = self.image_encoder_kwargs(embed_dim)
        return build_neuroclip(self.image_kwargs, self.text_kwargs, self.plans.neuroclip.init_temperature)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW, weight decay on weight matrices only (not norms, biases, embeddings' scale or temperature)."""
        assert self.network is not None
        decay, no_decay = [], []
        for name, parameter in self.network.named_parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 and "embedding" not in name else no_decay).append(parameter)
        groups = [{"params": decay, "weight_decay": self.plans.neuroclip.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.initial_lr, betas=(0.9, 0.98), eps=1e-6)

    def build_lr_scheduler(self) -> Any:
        """Warm-up then cosine decay, stepped per epoch."""
        assert self.optimizer is not None
        return WarmupCosineScheduler(self.optimizer, self.initial_lr, self.num_epochs, self.plans.neuroclip.warmup_fraction)

    def build_dataloaders(self) -> tuple[NeuroCLIPTrainLoader, NeuroCLIPValidationLoader | None]:
        """Class-balanced training batches; validation batches when the held-out images span 2+ classes."""
        self.prepare_data()
        assert self.tokenizer is not None and self.cache is not None
        tokens = TokenCache(self.tokenizer)
        max_classes = self.settings.batch_size or self.plans.neuroclip.max_batch_classes
        train = NeuroCLIPTrainLoader(self.train_samples, self.cache, tokens, max_classes, self.settings.seed,
                                     self.augment, self.samples_per_class)
        val = None
        if len({s.class_key for s in self.val_samples}) >= 2:
            val = NeuroCLIPValidationLoader(self.val_samples, self.cache, tokens, max_classes)
        return train, val

    @property
    def clip(self) -> NeuroCLIP:
        """The network, typed."""
        assert isinstance(self.network, NeuroCLIP)
        return self.network

    def _forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["images"].to(self.device, non_blocking=True)
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        with self.autocast():
            logits_per_image, logits_per_text = self.clip(images, tokens)
        logits_per_image, logits_per_text = logits_per_image.float(), logits_per_text.float()
        return logits_per_image, contrastive_loss(logits_per_image, logits_per_text, batch["prompts"])

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One contrastive step; the logit scale is clamped to [0, ln 100] afterwards, as CLIP does."""
        logits, loss = self._forward(batch)
        self.optimize(loss)
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        return {"loss": float(loss.detach()), "chance_loss": math.log(len(batch["prompts"])),
                "acc": in_batch_accuracy(logits.detach(), batch["prompts"]),
                "temperature": float(torch.exp(-self.clip.logit_scale.detach()))}

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Contrastive loss and in-batch image->text accuracy of a held-out batch."""
        logits, loss = self._forward(batch)
        return {"loss": float(loss), "acc": in_batch_accuracy(logits, batch["prompts"])}

    # -------------------------------------------------------- evaluation
    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, E) on the CPU."""
        assert self.tokenizer is not None
        tokens = TokenCache(self.tokenizer)
        out = [self.clip.encode_text(tokens(prompts[i:i + self.embed_batch_size]).to(self.device)).float().cpu()
               for i in range(0, len(prompts), self.embed_batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def embed_images(self, samples: Sequence[NeuroCLIPSample]) -> torch.Tensor:
        """L2-normalised image embeddings (N, E) on the CPU (centre crops, no augmentation)."""
        assert self.cache is not None
        out = []
        for start in range(0, len(samples), self.embed_batch_size):
            volumes = self.cache.batch(samples[start:start + self.embed_batch_size]).to(self.device)
            out.append(self.clip.encode_image(volumes).float().cpu())
        return torch.cat(out)

    def evaluate(self) -> dict[str, Any]:
        """Zero-shot retrieval on the validation images and the TE/TR sensitivity of the text embedding."""
        was_training = self.clip.training
        self.clip.eval()
        try:
            samples = self.val_samples
            images = self.embed_images(samples)
            candidates = text_candidates([s.prompt for s in samples], self.all_prompts, NUM_TEXT_CANDIDATES)
            i2t = image_to_text_top1(images, candidates, self.embed_texts)
            i2m, per_modality = image_to_modality_top1(images, [s.modality for s in samples],
                                                       [s.subject for s in samples], self.typical, self.embed_texts)
            sensitivity = parameter_sensitivity(self.typical, self.embed_texts, samples[0].subject if samples else None)
        finally:
            self.clip.train(was_training)
        num_candidates = max(len(c) for c in candidates) if candidates else 0
        return {
            "num_images": len(samples),
            "image_to_text_top1": i2t,
            "image_to_text_num_candidates": num_candidates,
            "image_to_text_chance": 1.0 / num_candidates if num_candidates else None,
            "image_to_modality_top1": i2m,
            "image_to_modality_per_modality": per_modality,
            "image_to_modality_chance": 1.0 / len(self.typical) if self.typical else None,
            "modality_candidates": "typical prompt of each training modality with the image's own subject",
            "typical_metadata": self.typical,
            "parameter_sensitivity": sensitivity,
            "temperature": float(torch.exp(-self.clip.logit_scale.detach())),
        }

    def _run_record(self) -> dict[str, Any]:
        """What the summaries add to the evaluation: the split's sizes and the collapse guard's record."""
        return {"num_train_images": len(self.train_samples),
                "validates_on_training_images": bool(self.split_record.get("validates_on_training_images")),
                "collapse_guard": self.guard.summary()}

    def _write_summary(self, evaluation: dict[str, Any], final: bool) -> Path:
        summary = {"trainer": type(self).__name__, "dataset_name": self.dataset_name, "fold": str(self.fold),
                   "epoch": self.current_epoch, "final": final, **evaluation, **self._run_record()}
        return write_json_atomic(self.layout.validation(self.fold) / "summary.json", finite_or_none(summary))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Add retrieval / sensitivity numbers to the epoch's logs and refresh the validation summary."""
        evaluation = self.evaluate()
        self.last_evaluation = evaluation
        sensitivity = evaluation["parameter_sensitivity"]
        logs["val_i2t_top1"] = evaluation["image_to_text_top1"]
        logs["val_i2m_top1"] = evaluation["image_to_modality_top1"]
        logs["val_retrieval"] = 0.5 * (logs["val_i2t_top1"] + logs["val_i2m_top1"])
        for key in ("te_distance_spearman", "te_pc1_spearman", "tr_distance_spearman", "tr_pc1_spearman"):
            if key in sensitivity:
                logs[f"val_{key}"] = sensitivity[key]
        self._guard_epoch(logs)
        self._write_summary(evaluation, final=False)

    # ------------------------------------------------------ collapse guard
    @torch.no_grad()
    def probe_statistics(self) -> tuple[float, float]:
        """Mean pairwise cosine of the probe's text embeddings and of its images' embeddings."""
        was_training = self.clip.training
        self.clip.eval()
        try:
            text = self.embed_texts([s.prompt for s in self.probe_samples])
            images = self.embed_images(self.probe_samples)
        finally:
            self.clip.train(was_training)
        return mean_pairwise_cosine(text), mean_pairwise_cosine(images)

    def _guard_epoch(self, logs: dict[str, float]) -> None:
        """Measure the probe, let the guard decide, and save, roll back or stop accordingly."""
        text_cosine, image_cosine = self.probe_statistics()
        logs["probe_text_cosine"], logs["probe_image_cosine"] = text_cosine, image_cosine
        check = EpochCheck(self.current_epoch, float(logs.get("train_loss", math.nan)),
                           float(logs.get("train_chance_loss", math.nan)), text_cosine, image_cosine)
        verdict = self.guard.observe(check, final_epoch=self.current_epoch >= self.num_epochs)
        logger.info("NeuroCLIP probe, epoch %d: loss %.4f (chance %.4f), %d distinct prompts at mean cosine %.4f, "
                    "their images %.4f: %s%s", check.epoch, check.train_loss, check.chance_loss,
                    len(self.probe_samples), text_cosine, image_cosine, verdict,
                    f" ({', '.join(check.symptoms)})" if check.symptoms else "")
        if not self.guard.config.enabled:
            self._write_guard_report()
            return
        if verdict == GOOD:
            self._save_good_state()
        elif verdict == BAD:
            logger.warning("NeuroCLIP epoch %d: %s (%d of %d epochs before recovery)", check.epoch,
                           ", ".join(check.symptoms), self.guard.streak, self.guard.config.patience)
        elif verdict == GRACE:
            logger.info("NeuroCLIP epoch %d: %s, not counted during the first %d epochs", check.epoch,
                        ", ".join(check.symptoms), self.guard.grace_epochs)
        elif verdict == RECOVER:
            epoch = self._restore_good_state()
            self.guard.events[-1]["back_to_epoch"] = epoch
            logger.warning("NeuroCLIP collapse at epoch %d (%s for %d epochs): back to the weights of epoch %d, "
                           "lr x%.3g from now on (recovery %d of %d)", check.epoch, ", ".join(check.symptoms),
                           self.guard.config.patience, epoch, self.guard.lr_scale, self.guard.recoveries,
                           self.guard.config.max_recoveries)
        elif verdict == RESTORE_FINAL:
            epoch = self._restore_good_state()
            self.guard.events[-1]["back_to_epoch"] = epoch
            logger.warning("NeuroCLIP's last epoch shows %s: the final weights are those of epoch %d, the last "
                           "that passed the collapse checks", ", ".join(check.symptoms), epoch)
        elif verdict == UNJUDGED_FINAL:
            logger.warning("NeuroCLIP ended with %s and no epoch has passed the collapse checks yet (the run is "
                           "too short to judge); train more epochs", ", ".join(check.symptoms))
        elif verdict == FAIL:
            self._write_guard_report()
            message = self.guard.failure_message(str(self.fold_folder), self._mean_batch_size(logs), self.initial_lr,
                                                 self.plans.neuroclip.warmup_fraction)
            logger.error("%s", message)
            raise NeuroCLIPCollapseError(message)
        self._write_guard_report()

    @staticmethod
    def _mean_batch_size(logs: dict[str, float]) -> float:
        chance = logs.get("train_chance_loss")
        return round(math.exp(chance), 2) if chance is not None and math.isfinite(chance) else math.nan

    def _write_guard_report(self) -> None:
        write_json_atomic(self.fold_folder / GUARD_FILE, self.guard.report())

    def _save_good_state(self) -> None:
        """Weights and optimiser state of an epoch that passed the checks, written atomically."""
        assert self.network is not None and self.optimizer is not None
        state = {"format_version": CHECKPOINT_FORMAT_VERSION, "network_weights": self.network.state_dict(),
                 "optimizer_state": self.optimizer.state_dict(), "current_epoch": self.current_epoch}
        save_checkpoint_atomic(self.fold_folder / GOOD_CHECKPOINT, state)

    def _restore_good_state(self) -> int:
        """Load the last good weights and optimiser state, apply the guard's lr scale; return their epoch."""
        assert self.network is not None and self.optimizer is not None
        path = self.fold_folder / GOOD_CHECKPOINT
        state = load_checkpoint(path, map_location=self.device)
        load_network_weights(self.network, state, path)
        self.optimizer.load_state_dict(state["optimizer_state"])
        self._apply_lr_scale()
        return int(state["current_epoch"])

    def _apply_lr_scale(self) -> None:
        """The schedule continues from its epoch with its peak lr scaled by the recoveries so far."""
        if isinstance(self.lr_scheduler, EpochScheduler):
            self.lr_scheduler.initial_lr = self.initial_lr * self.guard.lr_scale
            self.lr_scheduler.load_state_dict(self.lr_scheduler.state_dict())  # re-applies the lr
        elif self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.initial_lr * self.guard.lr_scale

    def on_train_start(self) -> None:
        """Write the starting weights as the first good state unless a resumed run already has one."""
        if not self.guard.config.enabled:
            return
        good = self.fold_folder / GOOD_CHECKPOINT
        if self._guard_restored and good.is_file():
            if int(load_checkpoint(good)["current_epoch"]) <= self.current_epoch:
                return
        self._save_good_state()

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """The guard's counters and record (so --c keeps the recoveries already spent)."""
        return {"collapse_guard": self.guard.state_dict()}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore the guard and its lr scale."""
        if "collapse_guard" in state:
            self.guard.load_state_dict(state["collapse_guard"])
            self._guard_restored = True
            self._apply_lr_scale()

    def write_model_folder(self) -> None:
        """Also record the fold's train / validation cases (``fold_<f>/neuroclip_split.json``)."""
        super().write_model_folder()
        write_json_atomic(self.fold_folder / SPLIT_FILE, self.split_record)

    # ------------------------------------------------------------ artifact
    def artifact_config(self) -> dict[str, Any]:
        """Provenance stored in the artifact's config.json."""
        return {"trainer": type(self).__name__, "dataset_name": self.dataset_name, "plans_name": self.plans.plans_name,
                "fold": str(self.fold), "epochs_trained": self.current_epoch, "image_encoder_kwargs": self.image_kwargs,
                "modalities": sorted(self.typical), "typical_metadata": self.typical,
                "validation": finite_or_none({k: v for k, v in (self.last_evaluation or {}).items()
                                         if k != "typical_metadata"})}

    def write_artifact(self) -> Path:
        """Save the text encoder artifact (see the module docstring for where)."""
        assert self.tokenizer is not None
        canonical = self.layout.text_encoder
        targets = [canonical] if self.fold == "all" else [self.fold_folder / TEXT_ENCODER_FOLDER]
        if self.fold != "all" and not (canonical / "config.json").is_file():
            targets.append(canonical)
        for folder in targets:
            save_text_encoder_artifact(folder, self.tokenizer, self.clip.text_encoder, self.artifact_config())
            logger.info("wrote the NeuroCLIP text encoder artifact to %s", folder)
        return targets[0]

    def on_train_end(self) -> None:
        """Write the artifact from the final weights; the guard's good state is no longer needed."""
        self.write_artifact()
        if self.guard.history:
            self._write_guard_report()
        (self.fold_folder / GOOD_CHECKPOINT).unlink(missing_ok=True)

    def final_validation(self) -> dict[str, Any]:
        """Evaluate the final weights, write ``validation/summary.json`` (and the artifact if absent)."""
        evaluation = {**self.evaluate(), **self._run_record()}
        self.last_evaluation = evaluation
        self._write_summary(evaluation, final=True)
        if self.fold == "all" and not (self.layout.text_encoder / "config.json").is_file():
            self.write_artifact()
        logger.info("NeuroCLIP validation: image->text top-1 %.3f (chance %.3f), "
                    "image->modality top-1 %.3f (chance %.3f)",
                    evaluation["image_to_text_top1"], evaluation["image_to_text_chance"] or float("nan"),
                    evaluation["image_to_modality_top1"], evaluation["image_to_modality_chance"] or float("nan"))
        return evaluation

    def trainer_info(self) -> dict[str, Any]:
        """trainer.json: networks, conditioning, modalities, typical metadata, artifact path."""
        return {**super().trainer_info(),
                "network": {"kind": "neuroclip", "image_encoder": self.image_kwargs, "text_encoder": self.text_kwargs},
                "conditioning": {"kind": "text", "text_encoder": TEXT_ENCODER_FOLDER},
                "modalities": sorted(self.typical), "typical_metadata": self.typical,
                "metadata_classes": sorted({s.class_key for s in self.train_samples}),
                "text_encoder_artifact": TEXT_ENCODER_FOLDER,
                "validation_split": {k: v for k, v in self.split_record.items()
                                     if k not in ("train_cases", "val_cases")},
                "collapse_guard": self.guard.config.to_dict()}
