"""UniSyn's image encoder: a full-resolution residual CNN (no downsampling) projected to the feature width."""
from __future__ import annotations

import torch
from torch import nn

from unisyn_v2.networks.conv_ops import conv_class


class ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, residual add, ReLU (the UniSyn ResBlock).

    There is no normalisation layer in the paper's description; to keep a deep stack (24 blocks) stable
    at initialisation, the second convolution's weights are scaled by ``residual_init_scale``
    (Fixup-style, 1/sqrt(num_blocks) by default from the encoder).
    """

    def __init__(self, width: int, dims: int, residual_init_scale: float = 1.0) -> None:
        super().__init__()
        conv = conv_class(dims)
        self.conv1 = conv(width, width, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv(width, width, kernel_size=3, padding=1)
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
    """

    def __init__(self, in_channels: int, width: int, num_blocks: int, feature_dim: int, dims: int = 2) -> None:
        super().__init__()
        if min(in_channels, width, feature_dim) < 1 or num_blocks < 0:
            raise ValueError(
                f"in_channels, width, feature_dim must be >= 1 and num_blocks >= 0, got "
                f"{in_channels}, {width}, {feature_dim}, {num_blocks}"
            )
        conv = conv_class(dims)
        self.dims = dims
        self.feature_dim = feature_dim
        self.stem = nn.Sequential(conv(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        scale = 1.0 / max(num_blocks, 1) ** 0.5
        self.blocks = nn.Sequential(*[ResidualBlock(width, dims, scale) for _ in range(num_blocks)])
        self.projection = conv(width, feature_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_channels, *spatial) to (B, feature_dim, *spatial)."""
        if x.ndim != self.dims + 2:
            raise ValueError(f"expected a {self.dims + 2}D input (B, C, *spatial), got shape {tuple(x.shape)}")
        return self.projection(self.blocks(self.stem(x)))
