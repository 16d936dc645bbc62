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
:class:`NeuroCLIPTrainerViT` swaps in TUMSyn's 3D ViT (16^3 tokens, 8^3 below 48^3 crops). Measured on
one CPU core, fold 0, 800 steps of the cpu preset (32^3 crops) on a 30-case phantom (10 modalities, 15
held-out images): CNN image->modality top-1 0.80, image->text 0.53 (3.7 min); ViT 0.67 and 0.40
(2.9 min; the CNN was at 0.87 / 0.53 after the same 2.9 min). On the 6-modality test phantom (36
held-out images, 300 steps) CNN 1.00 / 0.56, ViT 0.83 / 0.53. Hence the CNN is the default.

Optimiser: AdamW (CLIP's betas 0.9/0.98, weight decay 0.1 on matrices only); lr: linear warm-up over
the first 20% of the epochs, then cosine decay (TUMSyn: warm-up 20 of 100 epochs, then decay to 0).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from unisyn_v2.experiment_planning.splits import SPLITS_FILE, fold_cases
from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.metadata.value_code import value_code_size
from unisyn_v2.networks.factory import build_neuroclip
from unisyn_v2.networks.neuroclip import MAX_LOGIT_SCALE, NeuroCLIP
from unisyn_v2.networks.text_artifact import ARTIFACT_FOLDER_NAME, NEUROCLIP_CONFIGURATION, save_text_encoder_artifact
from unisyn_v2.preprocessing.case_store import preprocessed_case_ids
from unisyn_v2.training.neuroclip_data import (
    NeuroCLIPSample, WholeBrainCache, collect_samples, contrastive_loss, typical_metadata,
)
from unisyn_v2.training.neuroclip_evaluation import (
    NUM_TEXT_CANDIDATES, image_to_modality_top1, image_to_text_top1, parameter_sensitivity, text_candidates,
)
from unisyn_v2.training.neuroclip_loaders import NeuroCLIPTrainLoader, NeuroCLIPValidationLoader, TokenCache, in_batch_accuracy
from unisyn_v2.training.schedule import WarmupCosineScheduler
from unisyn_v2.training.trainer_base import TrainerBase

logger = logging.getLogger(__name__)

_TEXT_FIELDS = ("manufacturer", "reconstruction_kernel", "tracer", "unit")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-/][A-Za-z0-9]+)*")


class NeuroCLIPTrainer(TrainerBase):
    """Contrastive pre-training of the metadata text encoder against a whole-brain 3D image encoder."""

    short_name: ClassVar[str | None] = "neuroclip"
    default_configuration: ClassVar[str | None] = NEUROCLIP_CONFIGURATION
    default_fold: ClassVar[int | str] = "all"
    best_metric_key: ClassVar[str] = "val_retrieval"
    best_metric_mode: ClassVar[str] = "max"
    image_encoder_kind: ClassVar[str] = "cnn"
    causal_text: ClassVar[bool] = False
    init_temperature: ClassVar[float] = 0.07
    supports_distributed: ClassVar[bool] = False  # contrastive batches would need a cross-rank gather; one process
    weight_decay: ClassVar[float] = 0.1
    warmup_fraction: ClassVar[float] = 0.2
    augment: ClassVar[bool] = True
    number_mode: ClassVar[str] = "digits"
    samples_per_class: ClassVar[int] = 1
    embed_batch_size: ClassVar[int] = 32

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
        return f"{cls.__name__}__{plans_name}__{NEUROCLIP_CONFIGURATION}"

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
            return fold_cases([], "all", all_ids)
        splits_path = self.preprocessed_folder / SPLITS_FILE
        if not splits_path.is_file():
            raise FileNotFoundError(f"{splits_path} is missing; run unisyn_plan_and_preprocess -d {self.dataset_name} "
                                    "first (or train fold 'all')")
        return fold_cases(read_json(splits_path), self.fold, all_ids)

    def prepare_data(self) -> None:
        """Samples, typical metadata, tokenizer and image cache (idempotent; needed before the network)."""
        if self._data_ready:
            return
        train_ids, val_ids = self._split()
        if self.settings.max_validation_cases is not None:
            val_ids = val_ids[: self.settings.max_validation_cases]
        self.train_samples = collect_samples(self.data_folder, train_ids)
        self.val_samples = collect_samples(self.data_folder, val_ids)
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
        logger.info("NeuroCLIP data: %d training images in %d metadata classes, %d validation images, %d modalities",
                    len(self.train_samples), len({s.class_key for s in self.train_samples}), len(self.val_samples),
                    len(self.typical))

    # ------------------------------------------------------------- hooks
    def plan_schedule(self) -> tuple[int, int, int, float]:
        """Stage-1 schedule from ``plans.neuroclip`` (validation batches from ``plans.training``)."""
        n = self.plans.neuroclip
        return n.num_epochs, n.iterations_per_epoch, self.plans.training.validation_iterations, n.initial_lr

    def image_encoder_kwargs(self, embed_dim: int) -> dict[str, Any]:
        """The image tower's kwargs (override for variants)."""
        widths = list(self.plans.neuroclip.image_widths)
        return {"kind": "cnn", "in_channels": 1, "widths": widths, "embed_dim": embed_dim}

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
        return build_neuroclip(self.image_kwargs, self.text_kwargs, self.init_temperature)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW, weight decay on weight matrices only (not norms, biases, embeddings' scale or temperature)."""
        assert self.network is not None
        decay, no_decay = [], []
        for name, parameter in self.network.named_parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 and "embedding" not in name else no_decay).append(parameter)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.initial_lr, betas=(0.9, 0.98), eps=1e-6)

    def build_lr_scheduler(self) -> Any:
        """Warm-up then cosine decay, stepped per epoch."""
        assert self.optimizer is not None
        return WarmupCosineScheduler(self.optimizer, self.initial_lr, self.num_epochs, self.warmup_fraction)

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
        return {"loss": float(loss.detach()), "acc": in_batch_accuracy(logits.detach(), batch["prompts"]),
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

    def _write_summary(self, evaluation: dict[str, Any], final: bool) -> Path:
        summary = {"trainer": type(self).__name__, "dataset_name": self.dataset_name, "fold": str(self.fold),
                   "epoch": self.current_epoch, "final": final, **evaluation}
        return write_json_atomic(self.fold_folder / "validation" / "summary.json", summary)

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
        self._write_summary(evaluation, final=False)

    # ------------------------------------------------------------ artifact
    def artifact_config(self) -> dict[str, Any]:
        """Provenance stored in the artifact's config.json."""
        return {"trainer": type(self).__name__, "dataset_name": self.dataset_name, "plans_name": self.plans.plans_name,
                "fold": str(self.fold), "epochs_trained": self.current_epoch, "image_encoder_kwargs": self.image_kwargs,
                "modalities": sorted(self.typical), "typical_metadata": self.typical,
                "validation": {k: v for k, v in (self.last_evaluation or {}).items() if k != "typical_metadata"}}

    def write_artifact(self) -> Path:
        """Save the text encoder artifact (see the module docstring for where)."""
        assert self.tokenizer is not None
        canonical = self.model_folder / ARTIFACT_FOLDER_NAME
        targets = [canonical] if self.fold == "all" else [self.fold_folder / ARTIFACT_FOLDER_NAME]
        if self.fold != "all" and not (canonical / "config.json").is_file():
            targets.append(canonical)
        for folder in targets:
            save_text_encoder_artifact(folder, self.tokenizer, self.clip.text_encoder, self.artifact_config())
            logger.info("wrote the NeuroCLIP text encoder artifact to %s", folder)
        return targets[0]

    def on_train_end(self) -> None:
        """Write the artifact from the final weights."""
        self.write_artifact()

    def final_validation(self) -> dict[str, Any]:
        """Evaluate the final weights, write ``validation/summary.json`` (and the artifact if absent)."""
        evaluation = self.evaluate()
        self.last_evaluation = evaluation
        self._write_summary(evaluation, final=True)
        if self.fold == "all" and not (self.model_folder / ARTIFACT_FOLDER_NAME / "config.json").is_file():
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
                "conditioning": {"kind": "text", "text_encoder": ARTIFACT_FOLDER_NAME},
                "modalities": sorted(self.typical), "typical_metadata": self.typical,
                "metadata_classes": sorted({s.class_key for s in self.train_samples}),
                "text_encoder_artifact": ARTIFACT_FOLDER_NAME}


class NeuroCLIPTrainerViT(NeuroCLIPTrainer):
    """TUMSyn's image side: a 3D ViT over 16^3-voxel tokens (8^3 when the crop is under 48 voxels per axis).

    Width/heads follow the text transformer; depth ``vit_layers``.
    """

    short_name: ClassVar[str | None] = "neuroclip_vit"
    vit_layers: ClassVar[int] = 4

    def image_encoder_kwargs(self, embed_dim: int) -> dict[str, Any]:
        size = list(self.plans.neuroclip.image_size)
        patch = 16 if min(size) >= 48 and all(s % 16 == 0 for s in size) else 8
        if any(s % patch for s in size):
            raise ValueError(f"NeuroCLIP image_size {size} must be divisible by the ViT patch size {patch}")
        t = self.plans.text_encoder
        return {"kind": "vit", "img_size": size, "patch_size": patch, "in_channels": 1, "width": t.width,
                "layers": self.vit_layers, "heads": t.heads, "embed_dim": embed_dim}
