"""The ablation trainers, each a few class attributes on top of the GFM / synthesis trainer.

- :class:`CrossAttnBaselineTrainer` (``crossattn``): TUMSyn's fusion block, the target prompt as the
  query of a cross-attention over the image features, whose output gates the feature channels, then a
  gated depthwise-conv feed-forward; same encoder and decoder as the GFM; L1 in both directions (the
  same number of syntheses per iteration as the GFM).
- :class:`OneHotGFMTrainer` (``onehot``): the GFM with modality one-hot codes instead of NeuroCLIP
  (TUMSyn's one-hot model); needs no stage 1.
- :class:`GFMBlockTrainer` (``gfm_block``) and :class:`CrossAttnPlainTrainer` (``crossattn_plain``): the
  controlled ablation of UniSyn's Table 2. ``crossattn`` carries TUMSyn's LayerNorm + feed-forward block
  after its fusion, which the paper's GFM lacks, so ``gfm`` vs ``crossattn`` mixes fusion and backbone.
  ``gfm`` vs ``crossattn_plain`` (no block on either) and ``gfm_block`` vs ``crossattn`` (the block on
  both) each swap the fusion (prompt arithmetic vs cross-attention gate) and nothing else.
- :class:`GFMTaskTrainer` (``gfm_task``): a task-specific GFM, one ``--tasks SRC->TGT`` pair.
- :class:`UNetBaselineTrainer` (``unet``): nnU-Net's plain regression U-Net, no text, one task.
"""

from __future__ import annotations

from typing import Any, ClassVar

from unisyn_v2.training.gfm_trainer import GFMTrainer
from unisyn_v2.training.synthesis_trainer import SynthesisTrainer


class CrossAttnBaselineTrainer(SynthesisTrainer):
    """Cross-attention fusion of the target prompt (text query, image key/value)."""

    network_kind: ClassVar[str] = "crossattn"
    conditioning: ClassVar[str] = "text"


class CrossAttnPlainTrainer(CrossAttnBaselineTrainer):
    """Cross-attention gate alone (``f_s * g``), on the plain GFM's backbone (ablation)."""

    network_overrides: ClassVar[dict[str, Any]] = {"refinement_block": False}


class GFMBlockTrainer(GFMTrainer):
    """The GFM with TUMSyn's refinement block after the restyling, on the cross-attention backbone (ablation)."""

    network_overrides: ClassVar[dict[str, Any]] = {"refinement_block": True}


class OneHotGFMTrainer(GFMTrainer):
    """The GFM conditioned on modality one-hot codes (no metadata)."""

    conditioning: ClassVar[str] = "onehot"


class GFMTaskTrainer(GFMTrainer):
    """The GFM trained on a single source -> target task."""

    single_task: ClassVar[bool] = True


class UNetBaselineTrainer(SynthesisTrainer):
    """A plain regression U-Net (dynamic-network-architectures) for one task, without prompts."""

    network_kind: ClassVar[str] = "unet"
    conditioning: ClassVar[str] = "none"
    both_directions: ClassVar[bool] = False
    single_task: ClassVar[bool] = True
