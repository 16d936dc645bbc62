"""NeuroCLIP's text side: a CLIP-style transformer over metadata-prompt token ids (context 224)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.metadata.value_code import DEFAULT_CENTRES, mask_numbers, prompt_value_code, value_code_size
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

    With ``value_encoding`` (issue 16), numbers reach the embedding by value and unit instead of as
    digit strings: each prompt is read back (the tokenizer is part of the config), its numbers are
    masked to ``#`` before the transformer, and the parameter-free code of
    :mod:`unisyn_v2.metadata.value_code` is appended to the (unit-normalised) transformer embedding.
    The output then has ``output_dim = embed_dim + value_code_size`` entries, and prompts differing in
    one parameter are further apart the more that parameter differs, whatever the weights.

    Args:
        vocab_size: tokenizer vocabulary size.
        context_length: maximum sequence length L (longer input raises ValueError).
        width, layers, heads: transformer size (CLIP ViT-B/16 text: 512, 12, 8).
        embed_dim: output embedding size.
        causal: use a causal attention mask.
        pad_token_id: id of the padding token.
        eot_token_id: id of the end-of-text token, or None.
        value_encoding: ``{"tokenizer": MetadataTokenizer.to_dict(), "centres": K, "weight": w}`` to
            encode numbers by value (``weight`` scales the value code against the unit text part).
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
        value_encoding: Optional[Mapping[str, Any]] = None,
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
        self.value_encoding: Optional[dict[str, Any]] = None
        self._value_tokenizer: Optional[MetadataTokenizer] = None
        self._prepared: dict[tuple[int, ...], tuple[list[int], torch.Tensor]] = {}
        if value_encoding is not None:
            self.value_encoding = {"tokenizer": dict(value_encoding["tokenizer"]),
                                   "centres": int(value_encoding.get("centres", DEFAULT_CENTRES)),
                                   "weight": float(value_encoding.get("weight", 1.0))}
            self._value_tokenizer = MetadataTokenizer.from_dict(self.value_encoding["tokenizer"], "value_encoding")
            if self._value_tokenizer.vocab_size != vocab_size:
                raise ValueError(f"value_encoding tokenizer has {self._value_tokenizer.vocab_size} ids, the encoder "
                                 f"vocab_size is {vocab_size}")
            if self.value_encoding["centres"] < 1 or self.value_encoding["weight"] <= 0:
                raise ValueError(f"value_encoding needs centres >= 1 and weight > 0, got {self.value_encoding}")

    @property
    def value_dim(self) -> int:
        """Length of the appended value code (0 without value encoding)."""
        return 0 if self.value_encoding is None else value_code_size(self.value_encoding["centres"])

    @property
    def output_dim(self) -> int:
        """Size of the prompt embedding: the projection's, plus the value code when numbers are encoded by value."""
        return self.text_projection.out_features + self.value_dim

    def _prepare_row(self, row: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """(ids of the prompt with numbers masked, its value code), cached by the row's ids."""
        key = tuple(int(i) for i in row[row != self.pad_token_id].tolist())
        if key not in self._prepared:
            assert self._value_tokenizer is not None and self.value_encoding is not None
            prompt = self._value_tokenizer.decode(key)
            centres = self.value_encoding["centres"]
            scale = self.value_encoding["weight"] / math.sqrt(centres + 1)  # a present field has norm = weight
            code = torch.from_numpy(prompt_value_code(prompt, centres)) * scale
            self._prepared[key] = (self._value_tokenizer.encode(mask_numbers(prompt)), code)
        return self._prepared[key]

    def _mask_values(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids with numbers masked (same width) and the (B, value_dim) value codes."""
        rows = [self._prepare_row(row) for row in token_ids.cpu()]
        masked = torch.full_like(token_ids, self.pad_token_id)
        for i, (ids, _) in enumerate(rows):
            masked[i, : len(ids)] = torch.tensor(ids, dtype=token_ids.dtype)
        codes = torch.stack([code for _, code in rows]).to(token_ids.device)
        return masked, codes

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
        codes = None
        if self.value_encoding is not None and token_ids.device.type != "meta":
            token_ids, codes = self._mask_values(token_ids)
            eot_positions = None  # the masked prompt is shorter: its own EOT counts
        if eot_positions is None:
            eot_positions = self.find_eot_positions(token_ids)
        eot_positions = torch.as_tensor(eot_positions, device=token_ids.device).long()
        if eot_positions.shape != token_ids.shape[:1]:
            raise ValueError(f"eot_positions must be (B,) = {tuple(token_ids.shape[:1])}, got {tuple(eot_positions.shape)}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self._attention_mask(token_ids, eot_positions)))
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        text = self.text_projection(pooled)
        if self.value_encoding is None:
            return text
        if codes is None:  # meta device (memory estimates): the shape only
            codes = torch.zeros(text.shape[0], self.value_dim, device=text.device, dtype=text.dtype)
        return torch.cat([F.normalize(text, dim=-1), codes.to(text.dtype)], dim=-1)
