"""UniSyn's image decoder: a per-location MLP, written as 1x1 convolutions so it runs on whole feature maps."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from unisyn_v2.networks.conv_ops import conv_class


class PointwiseMLPDecoder(nn.Module):
    """Fully connected layers applied independently at every location (1x1 convs, ReLU between).

    UniSyn: widths 2048, 1024, 1024 then 8 outputs (the 8 slices of a 2.5D patch), i.e.
    ``hidden=(2048, 1024, 1024), out_channels=8``. The last layer is linear so intensities are unbounded.

    Args:
        feature_dim: input feature channels.
        hidden: hidden widths.
        out_channels: output channels (2.5D: slices k).
        dims: 2 or 3.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden: Sequence[int] = (2048, 1024, 1024),
        out_channels: int = 8,
        dims: int = 2,
    ) -> None:
        super().__init__()
        conv = conv_class(dims)
        widths = [int(feature_dim), *[int(h) for h in hidden]]
        if min(widths) < 1 or out_channels < 1:
            raise ValueError(f"all widths must be >= 1, got feature_dim={feature_dim}, hidden={list(hidden)}, "
                             f"out_channels={out_channels}")
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [conv(w_in, w_out, kernel_size=1), nn.ReLU(inplace=True)]
        layers.append(conv(widths[-1], out_channels, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map (B, feature_dim, *spatial) to (B, out_channels, *spatial)."""
        return self.layers(features)
