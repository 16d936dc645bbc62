"""TUMSyn-style text/image fusion by cross-attention: the baseline UniSyn's prompt arithmetic replaces."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from unisyn_v2.networks.conv_ops import broadcast_to_spatial
from unisyn_v2.networks.outputs import SynthesisOutput


class CrossAttnSynthesisNetwork(nn.Module):
    """Encoder features fused with the target prompt by cross-attention, then decoded pointwise.

    As in TUMSyn, the (frozen) target text embedding goes through an adapter (Linear + ReLU) and is the
    *query*; the image features (one token per location, layer-normalised) are key and value. With one
    text token the attention returns one context vector per sample: an image-aware summary selected by
    the prompt. It is projected and added at every location on top of the identity (residual) path,
    f = f_s + W ctx, so the fusion is a per-sample, per-channel shift of the feature map; spatial detail
    comes only from f_s. TUMSyn's LIIF decoder (arbitrary output scale) is replaced by the same
    pointwise decoder the GFM uses, so the ablation isolates the fusion.

    Args:
        encoder: image -> features (B, feature_dim, *spatial).
        text_dim: prompt embedding size.
        feature_dim: feature channels of the encoder output.
        num_heads: attention heads (must divide feature_dim).
        decoder: features -> image.
    """

    def __init__(self, encoder: nn.Module, text_dim: int, feature_dim: int, num_heads: int, decoder: nn.Module) -> None:
        super().__init__()
        if num_heads < 1 or feature_dim % num_heads:
            raise ValueError(f"num_heads must divide feature_dim, got feature_dim={feature_dim}, num_heads={num_heads}")
        self.encoder = encoder
        self.text_adapter = nn.Sequential(nn.Linear(text_dim, feature_dim), nn.ReLU())
        self.kv_norm = nn.LayerNorm(feature_dim)
        self.attention = nn.MultiheadAttention(feature_dim, num_heads, batch_first=True)
        self.context_projection = nn.Linear(feature_dim, feature_dim)
        self.decoder = decoder

    def fuse(self, features: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
        """Return f_s + W attn(q=adapter(T_t), k=v=f_s) broadcast over every location."""
        tokens = self.kv_norm(features.flatten(2).transpose(1, 2))  # (B, N, F)
        query = self.text_adapter(target_text).unsqueeze(1)  # (B, 1, F)
        context, _ = self.attention(query, tokens, tokens, need_weights=False)
        shift = self.context_projection(context.squeeze(1))
        return features + broadcast_to_spatial(shift, features.ndim)

    def forward(
        self, source: torch.Tensor, source_text: Optional[torch.Tensor], target_text: torch.Tensor
    ) -> SynthesisOutput:
        """Synthesise the target; source_text is accepted for interface parity with the GFM and unused."""
        features = self.encoder(source)
        return SynthesisOutput(synthesis=self.decoder(self.fuse(features, target_text)), anatomy=features)
