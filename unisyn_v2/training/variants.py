"""The ablation trainers, each a few class attributes on top of the GFM / synthesis trainer.

- :class:`CrossAttnBaselineTrainer` (``crossattn``): TUMSyn's fusion block, the target prompt as the
  query of a cross-attention over the image features, whose output gates the feature channels, then a
  gated depthwise-conv feed-forward; same encoder and decoder as the GFM; L1 in both directions (the
  same number of syntheses per iteration as the GFM).
- :class:`OneHotGFMTrainer` (``onehot``): the GFM with modality one-hot codes instead of NeuroCLIP
  (TUMSyn's one-hot model); needs no stage 1.
- :class:`GFMTaskTrainer` (``gfm_task``): a task-specific GFM, one ``--tasks SRC->TGT`` pair.
- :class:`UNetBaselineTrainer` (``unet``): nnU-Net's plain regression U-Net, no text, one task.
"""

from __future__ import annotations

from typing import ClassVar

from unisyn_v2.training.gfm_trainer import GFMTrainer
from unisyn_v2.training.synthesis_trainer import SynthesisTrainer


class CrossAttnBaselineTrainer(SynthesisTrainer):
    """Cross-attention fusion of the target prompt (text query, image key/value)."""

    short_name: ClassVar[str | None] = "crossattn"
    network_kind: ClassVar[str] = "crossattn"
    conditioning: ClassVar[str] = "text"


class OneHotGFMTrainer(GFMTrainer):
    """The GFM conditioned on modality one-hot codes (no metadata)."""

    short_name: ClassVar[str | None] = "onehot"
    conditioning: ClassVar[str] = "onehot"


class GFMTaskTrainer(GFMTrainer):
    """The GFM trained on a single source -> target task."""

    short_name: ClassVar[str | None] = "gfm_task"
    single_task: ClassVar[bool] = True


class UNetBaselineTrainer(SynthesisTrainer):
    """A plain regression U-Net (dynamic-network-architectures) for one task, without prompts."""

    short_name: ClassVar[str | None] = "unet"
    network_kind: ClassVar[str] = "unet"
    conditioning: ClassVar[str] = "none"
    both_directions: ClassVar[bool] = False
    single_task: ClassVar[bool] = True
