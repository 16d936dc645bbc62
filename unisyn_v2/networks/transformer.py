"""Pre-LayerNorm transformer block shared by the metadata text encoder and the 3D ViT image encoder."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class PreLNBlock(nn.Module):
    """x + MHA(LN(x)); x + MLP(LN(x)), the CLIP residual attention block (GELU, 4x MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"heads must divide width, got width={width}, heads={heads}")
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, L, width); attn_mask: None or bool (B * heads, L, L), True = may not attend."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of PreLNBlock with one shared attention mask."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.heads = heads
        self.blocks = nn.ModuleList([PreLNBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask)
        return x
