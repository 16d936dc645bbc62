"""UniSyn's image encoder: a full-resolution residual CNN (no downsampling) projected to the feature width."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from unisyn_v2.networks.conv_ops import conv_class


class ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, residual add, ReLU (the UniSyn ResBlock).

    There is no normalisation layer in the paper's description; to keep a deep stack (24 blocks) stable
    at initialisation, the second convolution's weights are scaled by ``residual_init_scale``
    (Fixup-style, 1/sqrt(num_blocks) by default from the encoder). ``dilation`` > 1 (not in the paper)
    widens both convolutions' reach at the same cost, with "same" padding so resolution is kept.
    """

    def __init__(self, width: int, dims: int, residual_init_scale: float = 1.0, dilation: int = 1) -> None:
        super().__init__()
        conv = conv_class(dims)
        self.conv1 = conv(width, width, kernel_size=3, padding=dilation, dilation=dilation)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv(width, width, kernel_size=3, padding=dilation, dilation=dilation)
        self.relu2 = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv2.weight.mul_(residual_init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))


class ResidualImageEncoder(nn.Module):
    """Stem conv3x3 + ReLU -> num_blocks residual blocks -> 1x1 projection to feature_dim.

    Resolution is kept throughout, as in UniSyn ("24 residual blocks, two 3x3 convolutions then ReLU"),
    so the pointwise decoder can map every location back to voxels. With ``dims=2`` the input channels
    are the k slices of a 2.5D patch; with ``dims=3`` they are image channels.

    Args:
        in_channels: input channels (2.5D: number of slices k).
        width: channels of the residual trunk (UniSyn: 1024).
        num_blocks: number of residual blocks (UniSyn: 24).
        feature_dim: output feature channels (UniSyn: 768).
        dims: 2 or 3.
        dilations: one dilation per block (default all 1, as the paper). The paper's 24 blocks see about
            99 voxels; a small CPU stack reaches a similar field of view with dilations such as (1, 2, 4, 8),
            where 4 undilated blocks see 19. See ``receptive_field``.
        input_skip: concatenate the input to the trunk's output before the 1x1 projection (not in the
            paper), so every feature can carry the voxel's own intensity on a path no ReLU or residual
            block touches; a small trunk otherwise smooths voxel-level detail (BENCHMARKS.md).
    """

    def __init__(self, in_channels: int, width: int, num_blocks: int, feature_dim: int, dims: int = 2,
                 dilations: Optional[Sequence[int]] = None, input_skip: bool = False) -> None:
        super().__init__()
        if min(in_channels, width, feature_dim) < 1 or num_blocks < 0:
            raise ValueError(
                f"in_channels, width, feature_dim must be >= 1 and num_blocks >= 0, got "
                f"{in_channels}, {width}, {feature_dim}, {num_blocks}"
            )
        dilations = [1] * num_blocks if dilations is None else [int(d) for d in dilations]
        if len(dilations) != num_blocks or min(dilations, default=1) < 1:
            raise ValueError(f"dilations must hold num_blocks={num_blocks} integers >= 1, got {dilations}")
        conv = conv_class(dims)
        self.dims = dims
        self.feature_dim = feature_dim
        self.dilations = tuple(dilations)
        self.input_skip = bool(input_skip)
        self.stem = nn.Sequential(conv(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        scale = 1.0 / max(num_blocks, 1) ** 0.5
        self.blocks = nn.Sequential(*[ResidualBlock(width, dims, scale, d) for d in dilations])
        self.projection = conv(width + (in_channels if self.input_skip else 0), feature_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_channels, *spatial) to (B, feature_dim, *spatial)."""
        if x.ndim != self.dims + 2:
            raise ValueError(f"expected a {self.dims + 2}D input (B, C, *spatial), got shape {tuple(x.shape)}")
        trunk = self.blocks(self.stem(x))
        return self.projection(torch.cat([trunk, x], dim=1) if self.input_skip else trunk)

    @property
    def receptive_field(self) -> int:
        """Voxels along each convolved axis (in-plane for 2.5D) that reach one output location: stem 3, a block 4 * d."""
        return 3 + 4 * sum(self.dilations)
