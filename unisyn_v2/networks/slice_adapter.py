"""2.5D adapter: the pipeline's 3D patches (B, C, k, H, W) fold their k slices into channels of a 2D network."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from unisyn_v2.networks.outputs import SynthesisOutput


class SlicesAsChannels(nn.Module):
    """Wrap a 2D synthesis network so that it takes and returns 3D patches.

    The sliding window and data pipeline are always 3D (ARCHITECTURE.md); a 2.5D network with
    in_channels = C * k sees (B, C * k, H, W). The synthesis (B, C_out * k, H, W) is unfolded back to
    (B, C_out, k, H, W); the anatomy features stay 2D (B, F, H, W).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(
        self,
        source: torch.Tensor,
        source_text: Optional[torch.Tensor] = None,
        target_text: Optional[torch.Tensor] = None,
    ) -> SynthesisOutput:
        """source (B, C, k, H, W) -> SynthesisOutput(synthesis (B, C_out, k, H, W), anatomy)."""
        if source.ndim != 5:
            raise ValueError(f"expected a (B, C, k, H, W) patch, got shape {tuple(source.shape)}")
        batch, channels, k, height, width = source.shape
        out = self.network(source.reshape(batch, channels * k, height, width), source_text, target_text)
        synthesis = out.synthesis
        if synthesis.shape[1] % k:
            raise ValueError(f"network output channels {synthesis.shape[1]} are not a multiple of k={k} slices")
        synthesis = synthesis.reshape(batch, synthesis.shape[1] // k, k, *synthesis.shape[2:])
        return SynthesisOutput(synthesis=synthesis, anatomy=out.anatomy)


def volume_network(network: nn.Module, is_slab: bool) -> nn.Module:
    """The network as the sliding window calls it: (B, 1, *patch) in and out."""
    return SlicesAsChannels(network) if is_slab else network
