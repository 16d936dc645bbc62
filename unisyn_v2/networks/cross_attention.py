"""TUMSyn-style text/image fusion by cross-attention: the baseline UniSyn's prompt arithmetic replaces."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from unisyn_v2.networks.conv_ops import broadcast_to_spatial
from unisyn_v2.networks.outputs import SynthesisOutput
from unisyn_v2.networks.refinement import ChannelLayerNorm, GatedConvFeedForward

__all__ = ["ChannelLayerNorm", "CrossAttnSynthesisNetwork", "GatedConvFeedForward", "TextQueryChannelAttention"]


class TextQueryChannelAttention(nn.Module):
    """One text query attends over every location; returns a (B, C) per-channel vector.

    TUMSyn's ``C_Cross_Attention3D``: multi-head attention with the (adapted) prompt as the only query
    and the image features as keys and values. Queries and keys are L2-normalised per head and the
    logits are their cosine, unscaled, as in TUMSyn.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads must divide feature_dim, got feature_dim={channels}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(channels, 2 * channels)
        self.projection = nn.Linear(channels, channels)

    def forward(self, features: torch.Tensor, query_text: torch.Tensor) -> torch.Tensor:
        batch, channels = features.shape[:2]
        heads, head_dim = self.num_heads, channels // self.num_heads
        tokens = features.flatten(2).transpose(1, 2)  # (B, N, C)
        key, value = self.key_value(tokens).chunk(2, dim=-1)
        key = F.normalize(key.reshape(batch, -1, heads, head_dim).transpose(1, 2), dim=-1)  # (B, h, N, d)
        value = value.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        query = F.normalize(self.query(query_text).reshape(batch, heads, 1, head_dim), dim=-1)
        weights = (query @ key.transpose(-2, -1)).softmax(dim=-1)  # (B, h, 1, N)
        return self.projection((weights @ value).reshape(batch, channels))


class CrossAttnSynthesisNetwork(nn.Module):
    """Encoder features fused with the target prompt by TUMSyn's cross-attention block, then decoded pointwise.

    TUMSyn's ``Block3D`` (depth 1): the frozen prompt embedding goes through an adapter MLP (``text_lora``)
    and is the single query of an attention over the image features (keys and values); the attended
    vector *multiplies* the feature map channel-wise (a prompt- and image-dependent gate); then
    LayerNorm, a residual gated depthwise-conv feed-forward, LayerNorm:
    ``x = LN(f_s * g); x = LN(x + FFN(x))``. TUMSyn's LIIF decoder (arbitrary output scale) is replaced by
    the pointwise decoder the GFM uses, so the ablation isolates the fusion. Unlike TUMSyn's code, tokens
    are laid out channel-last before the heads are split (its ``reshape`` of a channel-first map mixes
    channels and locations).

    Args:
        encoder: image -> features (B, feature_dim, *spatial).
        text_dim: prompt embedding size.
        feature_dim: feature channels of the encoder output.
        num_heads: attention heads (must divide feature_dim).
        decoder: features -> image.
        dims: 2 (2.5D) or 3, for the feed-forward's depthwise convolution.
        refinement_block: keep TUMSyn's LayerNorm + feed-forward after the gate (default). Without it the
            fusion is the gate alone, ``f_s * g``: the backbone of the plain GFM, so the ablation
            ``gfm`` vs ``crossattn_plain`` swaps the fusion and nothing else (``gfm_block`` vs ``crossattn``
            is the same comparison on TUMSyn's backbone).
    """

    def __init__(self, encoder: nn.Module, text_dim: int, feature_dim: int, num_heads: int, decoder: nn.Module,
                 dims: int = 2, refinement_block: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.text_adapter = nn.Sequential(nn.Linear(text_dim, feature_dim), nn.ReLU(),
                                          nn.Linear(feature_dim, feature_dim))
        self.attention = TextQueryChannelAttention(feature_dim, num_heads)
        self.refinement_block = bool(refinement_block)
        if self.refinement_block:  # attribute names kept flat: checkpoints of earlier versions still load
            self.gate_norm = ChannelLayerNorm(feature_dim)
            self.feed_forward = GatedConvFeedForward(feature_dim, dims)
            self.output_norm = ChannelLayerNorm(feature_dim)
        self.decoder = decoder

    def channel_gate(self, features: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
        """The (B, feature_dim) vector that multiplies the features: attention of the prompt over them."""
        return self.attention(features, self.text_adapter(target_text))

    def fuse(self, features: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
        """``LN(x + FFN(x))`` with ``x = LN(f_s * gate)`` (``f_s * gate`` without the refinement block)."""
        gate = broadcast_to_spatial(self.channel_gate(features, target_text), features.ndim)
        if not self.refinement_block:
            return features * gate
        x = self.gate_norm(features * gate)
        return self.output_norm(x + self.feed_forward(x))

    def forward(
        self, source: torch.Tensor, source_text: Optional[torch.Tensor], target_text: torch.Tensor
    ) -> SynthesisOutput:
        """Synthesise the target; source_text is accepted for interface parity with the GFM and unused."""
        features = self.encoder(source)
        return SynthesisOutput(synthesis=self.decoder(self.fuse(features, target_text)), anatomy=features)
