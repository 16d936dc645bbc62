"""TUMSyn's refinement after fusion: LayerNorm over channels, a residual gated depthwise-conv feed-forward,
LayerNorm. Shared by the cross-attention baseline (always, as TUMSyn builds it) and, for the controlled
ablation of issue 16, by the GFM (``refinement_block=True``), so fusion and backbone can be compared
separately."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unisyn_v2.networks.conv_ops import conv_class


class ChannelLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of every location of a (B, C, *spatial) map (TUMSyn's ``LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class GatedConvFeedForward(nn.Module):
    """Restormer's gated depthwise-conv feed-forward (TUMSyn's ``Mlp``): 1x1 up, depthwise 3x3, GELU gate,
    1x1 down; the only spatial mixing in the fusion block."""

    def __init__(self, channels: int, dims: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = 2 * max(1, int(channels * ratio) // 2)
        conv = conv_class(dims)
        self.project_in = conv(channels, hidden, kernel_size=1, bias=False)
        self.depthwise = conv(hidden, hidden, kernel_size=3, padding=1, groups=hidden, bias=False)
        self.project_out = conv(hidden // 2, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.depthwise(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class RefinementBlock(nn.Module):
    """``LN(x + FFN(x))`` with ``x = LN(fused)``: the spatial feed-forward TUMSyn puts after its fusion."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        self.gate_norm = ChannelLayerNorm(channels)
        self.feed_forward = GatedConvFeedForward(channels, dims)
        self.output_norm = ChannelLayerNorm(channels)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        x = self.gate_norm(fused)
        return self.output_norm(x + self.feed_forward(x))
