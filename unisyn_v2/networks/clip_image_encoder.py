"""NeuroCLIP's image side: whole (downsampled) brain volumes -> one embedding, as a small CNN or a 3D ViT."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from unisyn_v2.networks.transformer import Transformer


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: batch statistics would leak information between the contrastive pairs
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class VolumeImageEncoder3d(nn.Module):
    """Strided 3D conv stages -> global average pool -> Linear(embed_dim).

    Each stage: conv3 stride 2 -> GroupNorm -> ReLU -> conv3 -> GroupNorm -> ReLU, so four stages take a
    48^3 (or 96^3) brain to 3^3 (6^3) before pooling. Cheap enough for CPU smoke runs; the ViT below is
    TUMSyn's choice.

    Args:
        in_channels: image channels.
        widths: channels per stage (each stage halves the resolution).
        embed_dim: output embedding size.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128, 256), embed_dim: int = 512) -> None:
        super().__init__()
        if not widths or min(widths) < 1 or embed_dim < 1:
            raise ValueError(f"widths must be non-empty positive ints and embed_dim >= 1, got {list(widths)}, {embed_dim}")
        stages: list[nn.Module] = []
        c_in = in_channels
        for c_out in widths:
            stages += [
                nn.Conv3d(c_in, c_out, 3, stride=2, padding=1), _group_norm(c_out), nn.ReLU(inplace=True),
                nn.Conv3d(c_out, c_out, 3, padding=1), _group_norm(c_out), nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.projection = nn.Linear(c_in, embed_dim)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, D, H, W) -> (B, embed_dim), not normalised."""
        if volume.ndim != 5:
            raise ValueError(f"expected (B, C, D, H, W), got shape {tuple(volume.shape)}")
        return self.projection(self.pool(self.features(volume)).flatten(1))


class ViTImageEncoder3d(nn.Module):
    """ViT over non-overlapping patch_size^3 tokens with a CLS token (TUMSyn: ViT-B/16 on 96^3 crops).

    Args:
        img_size: input size, an int (cube) or (D, H, W); each must be divisible by patch_size.
        patch_size: token edge length in voxels.
        in_channels: image channels.
        width, layers, heads: transformer size (ViT-B: 768, 12, 12).
        embed_dim: output embedding size.
    """

    def __init__(
        self,
        img_size: Union[int, Sequence[int]] = 96,
        patch_size: int = 16,
        in_channels: int = 1,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        embed_dim: int = 512,
    ) -> None:
        super().__init__()
        size = (img_size,) * 3 if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(size) != 3 or any(s % patch_size for s in size):
            raise ValueError(f"img_size must be 3 sizes divisible by patch_size={patch_size}, got {img_size}")
        self.img_size = size
        num_tokens = (size[0] // patch_size) * (size[1] // patch_size) * (size[2] // patch_size)
        self.patch_embedding = nn.Conv3d(in_channels, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(num_tokens + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.class_embedding, std=width ** -0.5)
        nn.init.normal_(self.positional_embedding, std=width ** -0.5)
        nn.init.normal_(self.projection.weight, std=width ** -0.5)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *img_size) -> (B, embed_dim), not normalised."""
        if volume.ndim != 5 or tuple(volume.shape[2:]) != self.img_size:
            raise ValueError(f"expected (B, C, {', '.join(map(str, self.img_size))}), got shape {tuple(volume.shape)}")
        tokens = self.patch_embedding(volume).flatten(2).transpose(1, 2)  # (B, N, width)
        cls = self.class_embedding.expand(tokens.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, tokens], dim=1) + self.positional_embedding)
        return self.projection(self.ln_post(self.transformer(x)[:, 0]))
