"""The shared stage-2 trainer: plans -> network, conditioning, (source, target) patch data, L1 steps.

Subclasses choose ``network_kind`` (factory kind: gfm, crossattn, unet), ``conditioning`` (text: the
frozen NeuroCLIP encoder; onehot; none), ``both_directions`` (each item also trains target -> source)
and ``single_task`` (needs exactly one task in the filter). :class:`GFMTrainer` replaces the step by
the cyclic one. The network is built by the static :meth:`SynthesisTrainer.build_network_from_plans`,
which prediction calls too (through ``model_folder.load_trained_model``).

Layout: batches are (B, 1, *patch); a 2.5D network sees (B, k, H, W) (:meth:`to_net`); for the
volume-level sliding window the network is wrapped in ``SlicesAsChannels`` (:func:`volume_network`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unisyn_v2.contracts.model_layout import TEXT_ENCODER_FOLDER, ModelFolderName
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.experiment_planning.splits import SPLITS_FILE, fold_cases, make_splits, validate_splits
from unisyn_v2.io_utils import read_json, write_json_atomic
from unisyn_v2.metadata.modalities import get_modality
from unisyn_v2.metadata.typical import typical_protocol
from unisyn_v2.networks.conditioners import OneHotConditioner, TextConditioner
from unisyn_v2.networks.factory import build_synthesis_network
from unisyn_v2.networks.liif import liif_decoder_of
from unisyn_v2.networks.text_artifact import (
    copy_text_encoder_artifact, load_text_encoder_artifact, text_encoder_artifact_folder,
    read_text_encoder_config,
)
from unisyn_v2.preprocessing.case_store import preprocessed_case_ids
from unisyn_v2.training.data.augmentation import AugmentationParams
from unisyn_v2.training.data.cases import CaseCollection
from unisyn_v2.training.data.loader import BatchBuilder, PatchLoader
from unisyn_v2.training.data.pair_sampler import PairSampler
from unisyn_v2.training.liif_training import liif_train_step
from unisyn_v2.training.losses import brain_weight, patch_psnr, patch_ssim, weighted_l1
from unisyn_v2.training.settings import TrainerSettings, task_key
from unisyn_v2.training.trainer_base import TrainerBase
from unisyn_v2.training.validation import run_final_validation

logger = logging.getLogger(__name__)


class SynthesisTrainer(TrainerBase):
    """Base of the GFM, cross-attention, one-hot and U-Net trainers (plain L1, both directions)."""

    network_kind: ClassVar[str] = "gfm"
    conditioning: ClassVar[str] = "text"  # text | onehot | none
    both_directions: ClassVar[bool] = True
    single_task: ClassVar[bool] = False
    network_overrides: ClassVar[dict[str, Any]] = {}  # network kwargs a variant fixes over the plans' (ablations)
    # L1 weight outside the brain mask (1.0: the paper's plain L1). Each step down has helped so far: at 0.1
    # a model painted an old subject's large ventricles as air (0.03 fixed that); 0.01
    # rather than 0.03 gave +0.26 dB (GFM) and +0.13 dB (CrossAttn) mean over the demo phantom's 20
    # directions (BENCHMARKS.md, "Background weight 0.01").
    background_weight: ClassVar[float] = 0.01

    def __init__(self, plans: Plans, configuration: str, fold: int | str, dataset_name: str,
                 preprocessed_folder: Path, output_folder: Path, device: torch.device,
                 settings: TrainerSettings | None = None) -> None:
        super().__init__(plans, configuration, fold, dataset_name, preprocessed_folder, output_folder, device, settings)
        self.config = plans.configuration(configuration)
        self.is_slab = self.config.is_slab
        self.patch_size = tuple(int(p) for p in self.config.patch_size)
        self.batch_size = self.settings.batch_size or self.config.batch_size
        self.tasks = self.settings.tasks
        if self.single_task and (self.tasks is None or len(self.tasks) != 1):
            raise ValueError(f"{type(self).__name__} trains one task: pass exactly one, e.g. --tasks T1w->CT")
        self.data_folder = self.preprocessed_folder / self.config.data_identifier
        self.train_cases, self.val_cases = self.split_cases()
        self.conditioner: Any = None
        self.final_summary: dict[str, Any] | None = None
        self._typical_metadata: dict[str, dict[str, Any]] | None = None

    @classmethod
    def model_folder_name(cls, plans_name: str, configuration: str, settings: TrainerSettings | None = None) -> str:
        """``<Class>[_<tasks>]__<plans>__<configuration>``: a task filter gets its own model folder."""
        tasks = settings.tasks if settings is not None else None
        suffix = "_" + "+".join(f"{s}-to-{t}" for s, t in tasks) if tasks else ""
        return str(ModelFolderName(f"{cls.__name__}{suffix}", plans_name, configuration))

    # ------------------------------------------------------------ folds / data
    def split_cases(self) -> tuple[list[str], list[str]]:
        """(train, val) case ids of the fold from splits_final.json (created if missing)."""
        all_ids = preprocessed_case_ids(self.data_folder)
        if not all_ids:
            raise FileNotFoundError(f"no preprocessed cases in {self.data_folder}; run unisyn_plan_and_preprocess first")
        path = self.preprocessed_folder / SPLITS_FILE
        if path.is_file():
            splits = validate_splits(read_json(path), all_ids, path)
        else:
            splits = make_splits(all_ids)
            if self.distributed.is_main:
                write_json_atomic(path, splits)
        return fold_cases(splits, self.fold, all_ids)

    def augmentation_params(self) -> AugmentationParams:
        """Training augmentation (override to change it; mirror axes also go to trainer.json for TTA)."""
        return AugmentationParams()

    def loader_workers(self) -> int:
        """The patch loader's background processes."""
        return self.settings.resolved_num_workers

    def build_dataloaders(self) -> tuple[PatchLoader, PatchLoader | None]:
        """Endless augmented training batches; a fixed set of unaugmented validation batches (this rank's share)."""
        fraction = self.plans.training.foreground_fraction_min
        items = self.distributed.shard(self.batch_size)
        cases = CaseCollection(self.data_folder, self.train_cases)
        sampler = PairSampler(cases.case_modalities(), self.tasks, seed=self.settings.seed,
                              case_prompts=cases.case_prompts())
        self.trained_tasks = [task_key(s, t) for s, t in sampler.tasks()]
        builder = BatchBuilder(cases, sampler, self.patch_size, self.batch_size, self.is_slab, self.settings.seed,
                               "train", self.augmentation_params(), fraction, items=items,
                               lesion_oversample=self.plans.training.lesion_oversample)
        train = PatchLoader(builder, self.settings.resolved_num_workers)
        val = None
        try:
            val_cases = CaseCollection(self.data_folder, self.val_cases)
            val_sampler = PairSampler(val_cases.case_modalities(), self.tasks, seed=self.settings.seed,
                                      case_prompts=val_cases.case_prompts())
            val_builder = BatchBuilder(val_cases, val_sampler, self.patch_size, self.batch_size, self.is_slab,
                                       self.settings.seed, "val", None, fraction, items=items)
            val = PatchLoader(val_builder, 0, num_batches=self.validation_iterations, restart_each_iteration=True)
        except ValueError as error:
            logger.warning("no validation batches: %s", error)
        return train, val

    # ---------------------------------------------------- network / conditioning
    def text_encoder_source(self) -> Path:
        """Stage 1's artifact: ``<results>/<Dataset>/NeuroCLIPTrainer__<plans>__neuroclip/text_encoder``."""
        override = self.settings.extra.get("text_encoder")
        if override:
            return Path(str(override))
        return text_encoder_artifact_folder(self.model_folder.parent.parent, self.dataset_name, self.plans.plans_name)

    def build_conditioner(self) -> Any:
        """TextConditioner from the model folder's copy of the artifact, OneHotConditioner or None."""
        if self.conditioning == "none":
            return None
        if self.conditioning == "onehot":
            return OneHotConditioner(self.plans.modalities, device=self.device)
        local = self.layout.text_encoder
        source = self.text_encoder_source()
        if not (self.settings.continue_training or self.settings.validation_only) or not (local / "config.json").is_file():
            if self.distributed.is_main:
                copy_text_encoder_artifact(source, local)  # FileNotFoundError says: run unisyn_train <D> neuroclip
            else:
                read_text_encoder_config(source)  # the same error on every rank rather than a hang
        self.distributed.barrier()  # the other ranks read rank 0's copy
        tokenizer, encoder = load_text_encoder_artifact(local, self.device)
        return TextConditioner(tokenizer, encoder, normalize=False, device=self.device)  # already normalised

    def network_info(self) -> dict[str, Any]:
        """``{"kind", "kwargs"}`` of the network, kwargs from the plans with text_dim from the conditioner."""
        if self.network_kind == "unet":
            return {"kind": "unet", "kwargs": dict(self.config.unet_kwargs)}
        kwargs = {**self.config.network_kwargs, **self.network_overrides}
        if self.conditioner is not None:
            kwargs["text_dim"] = int(self.conditioner.text_dim)
        if self.network_kind == "crossattn" and "num_heads" not in kwargs:
            kwargs["num_heads"] = 4 if int(kwargs["feature_dim"]) % 4 == 0 else 1
        return {"kind": self.network_kind, "kwargs": kwargs}

    @staticmethod
    def build_network_from_plans(plans: Plans, configuration: str, trainer_info: dict[str, Any]) -> nn.Module:
        """The raw network (2.5D: a 2D network on k slices) from ``trainer_info["network"]``."""
        network = trainer_info.get("network") or {}
        if "kind" not in network or "kwargs" not in network:
            raise ValueError("trainer_info has no 'network' {'kind', 'kwargs'} entry")
        plans.configuration(configuration)  # validates the configuration name
        return build_synthesis_network(network["kind"], network["kwargs"])

    def build_network(self) -> nn.Module:
        self.conditioner = self.build_conditioner()
        return self.build_network_from_plans(self.plans, self.configuration, {"network": self.network_info()})

    def typical_metadata(self) -> dict[str, dict[str, Any]]:
        """The typical protocol of each modality among the training cases (medoid, computed once)."""
        if self._typical_metadata is not None:
            return self._typical_metadata
        protocols: dict[str, list[dict[str, Any]]] = {}
        cases = CaseCollection(self.data_folder, self.train_cases)
        for info in cases.cases.values():
            for description in info.descriptions:
                protocols.setdefault(description.modality, []).append(description.metadata.to_dict())
        self._typical_metadata = {m: typical_protocol(p) for m, p in sorted(protocols.items())}
        return self._typical_metadata

    def trainer_info(self) -> dict[str, Any]:
        conditioning = self.conditioner.describe() if self.conditioner is not None else {"kind": "none"}
        if self.conditioning == "text":
            conditioning["text_encoder"] = TEXT_ENCODER_FOLDER
        typical = self.typical_metadata()
        return {**super().trainer_info(), "network": self.network_info(), "conditioning": conditioning,
                "is_slab": self.is_slab, "patch_size": list(self.patch_size),
                "mirror_axes": list(self.augmentation_params().mirror_axes),
                "modalities": sorted(typical), "typical_metadata": typical,
                "tasks": getattr(self, "trained_tasks", None),
                "task_filter": [task_key(s, t) for s, t in self.tasks] if self.tasks else None}

    # ------------------------------------------------------------------ steps
    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, *patch) -> the network's layout ((B, k, H, W) for 2.5D)."""
        return x[:, 0] if self.is_slab else x

    def batch_to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Arrays -> tensors on the device in network layout, descriptions -> embeddings."""
        out = {key: self.to_net(torch.from_numpy(batch[key]).to(self.device, non_blocking=True))
               for key in ("source", "target", "source_clean") if key in batch}
        out.setdefault("source_clean", out["source"])
        mask = (torch.from_numpy(batch["mask"]).to(self.device) if "mask" in batch
                else torch.ones(batch["source"].shape, device=self.device))
        head = torch.from_numpy(batch["head"]).to(self.device) if "head" in batch else mask
        out["mask"], out["head"] = self.to_net(mask), self.to_net(head)
        out["weight"] = self.region_weight(out["mask"], out["head"], batch["target_descriptions"])
        out["source_weight"] = self.region_weight(out["mask"], out["head"], batch["source_descriptions"])
        lesion_weight = self.plans.training.lesion_weight
        if "lesion" in batch and lesion_weight != 1.0:  # plans training.lesion_weight: lesion voxels count more (or less)
            lesion = self.to_net(torch.from_numpy(batch["lesion"]).to(self.device)).float()
            scale = 1.0 + (lesion_weight - 1.0) * lesion
            out["weight"], out["source_weight"] = out["weight"] * scale, out["source_weight"] * scale
        embed = self.conditioner.embed if self.conditioner is not None else (lambda _d: None)
        out["source_text"] = embed(batch["source_descriptions"])
        out["target_text"] = embed(batch["target_descriptions"])
        return out

    def region_weight(self, brain: torch.Tensor, head: torch.Tensor, descriptions: list[Any]) -> torch.Tensor:
        """Per-item voxel weights of the synthesis loss: 1 in each item's loss region (the plans' ``loss_region``
        of the synthesised image's family: the head for CT, the brain for MRI), ``background_weight`` elsewhere."""
        use_head = torch.tensor([self.plans.loss_region(get_modality(d.modality).family) == "head" for d in descriptions],
                                device=brain.device).view(-1, *([1] * (brain.dim() - 1)))
        region = torch.where(use_head, head, brain)
        return brain_weight(region, self.background_weight)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """L1 of source -> target (+ target -> source when ``both_directions``)."""
        decoder = liif_decoder_of(self.network)
        if decoder is not None:  # an implicit decoder: coarse source, random fine target points (training.liif_training)
            return liif_train_step(self, batch, decoder, cyclic=False)

        def forward(network: nn.Module, b: dict[str, Any]) -> torch.Tensor:
            synthesis = network(b["source"], b["source_text"], b["target_text"]).synthesis
            loss = weighted_l1(synthesis, b["target"], b["weight"])
            if self.both_directions:
                back = network(b["target"], b["target_text"], b["source_text"]).synthesis
                loss = loss + weighted_l1(back, b["source_clean"], b["source_weight"])
            return loss

        b = self.batch_to_device(batch)
        with self.autocast():
            loss = self.run_network(forward, b)
        self.optimize(loss)
        return {"loss": float(loss.detach())}

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Weighted L1, brain PSNR and SSIM of source -> target on unaugmented patches (normalised scale)."""
        b = self.batch_to_device(batch)
        with self.autocast():
            prediction = self.network(b["source"], b["source_text"], b["target_text"]).synthesis.float()
        return {"loss": float(weighted_l1(prediction, b["target"], b["weight"])),
                "psnr": float(patch_psnr(prediction, b["target"], mask=b["mask"])),
                "ssim": float(patch_ssim(prediction, b["target"]))}

    def final_validation(self) -> dict[str, Any] | None:
        """Sliding-window validation of the held-out cases -> fold_N/validation/summary.json."""
        self.final_summary = run_final_validation(self)
        return self.final_summary
