"""NeuroCLIP's text side: a CLIP-style transformer over metadata-prompt token ids (context 224)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from unisyn_v2.networks.transformer import Transformer


class MetadataTextEncoder(nn.Module):
    """Token ids (B, L) -> prompt embedding (B, embed_dim), pooled at the end-of-text token.

    The TUMSyn text encoder (CLIP text transformer) with the context extended from 90 to 224 tokens
    (UniSyn): token + learned positional embeddings, pre-LN blocks, final LayerNorm, the EOT token's
    state projected (no bias) to ``embed_dim``. The output is not normalised (NeuroCLIP does that).

    Attention is bidirectional by default (``causal=False``): prompts are never generated, and a field
    name may need the value written after it, so every token may attend both ways; CLIP's causal mask
    only comes from its GPT lineage. ``causal=True`` reproduces CLIP exactly. Either way, keys that are
    padding (``token_ids == pad_token_id``) or lie after the EOT position are masked, so whatever follows
    the EOT token cannot change the embedding.

    EOT positions: ``eot_positions`` if given to forward, else the first ``token_ids == eot_token_id``
    (when set), else the last non-padding token.

    Args:
        vocab_size: tokenizer vocabulary size.
        context_length: maximum sequence length L (longer input raises ValueError).
        width, layers, heads: transformer size (CLIP ViT-B/16 text: 512, 12, 8).
        embed_dim: output embedding size.
        causal: use a causal attention mask.
        pad_token_id: id of the padding token.
        eot_token_id: id of the end-of-text token, or None.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 224,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        embed_dim: int = 512,
        causal: bool = False,
        pad_token_id: int = 0,
        eot_token_id: Optional[int] = None,
    ) -> None:
        super().__init__()
        if vocab_size < 2 or context_length < 1 or embed_dim < 1:
            raise ValueError(f"need vocab_size >= 2, context_length >= 1, embed_dim >= 1, got "
                             f"{vocab_size}, {context_length}, {embed_dim}")
        self.context_length = context_length
        self.causal = causal
        self.pad_token_id = pad_token_id
        self.eot_token_id = eot_token_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection.weight, std=width ** -0.5)

    def find_eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Return (B,) EOT indices: first eot_token_id if set, else the last non-padding token."""
        if self.eot_token_id is not None:
            is_eot = token_ids == self.eot_token_id
            if token_ids.device.type != "meta" and not bool(is_eot.any(dim=1).all()):
                raise ValueError(f"every sequence must contain eot_token_id={self.eot_token_id}")
            return is_eot.int().argmax(dim=1)
        non_pad = (token_ids != self.pad_token_id).int()
        return token_ids.shape[1] - 1 - non_pad.flip(1).argmax(dim=1)

    def _attention_mask(self, token_ids: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """Bool (B * heads, L, L), True = masked: padding and post-EOT keys (+ future keys if causal)."""
        batch, length = token_ids.shape
        positions = torch.arange(length, device=token_ids.device)
        masked_keys = (token_ids == self.pad_token_id) | (positions[None, :] > eot_positions[:, None])
        mask = masked_keys[:, None, :].expand(batch, length, length)
        if self.causal:
            mask = mask | (positions[None, :] > positions[:, None])[None]
        # every query keeps its own key, so no row is fully masked (padded queries are never read)
        mask = mask & ~torch.eye(length, dtype=torch.bool, device=token_ids.device)[None]
        return mask.repeat_interleave(self.transformer.heads, dim=0)

    def forward(self, token_ids: torch.Tensor, eot_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode (B, L) token ids (L <= context_length) into (B, embed_dim) prompt embeddings."""
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be (B, L), got shape {tuple(token_ids.shape)}")
        length = token_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"sequence length {length} exceeds context_length={self.context_length}; "
                             "shorten the prompt or build the encoder with a longer context")
        if eot_positions is None:
            eot_positions = self.find_eot_positions(token_ids)
        eot_positions = torch.as_tensor(eot_positions, device=token_ids.device).long()
        if eot_positions.shape != token_ids.shape[:1]:
            raise ValueError(f"eot_positions must be (B,) = {tuple(token_ids.shape[:1])}, got {tuple(eot_positions.shape)}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self._attention_mask(token_ids, eot_positions)))
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        return self.text_projection(pooled)
