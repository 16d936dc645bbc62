"""Conditioners: turn image descriptions (modality + metadata + subject) into the (B, text_dim) embeddings
the synthesis networks take as ``source_text`` / ``target_text``.

- :class:`TextConditioner`: the frozen NeuroCLIP tokenizer + text encoder (stage 1). Always in eval
  mode and run without gradients; embeddings are cached by prompt string (a dataset has few distinct
  prompts), so after the first batches conditioning costs a dictionary lookup.
- :class:`OneHotConditioner`: TUMSyn's one-hot baseline, the modality code only.

Both are plain objects (not ``nn.Module``), so their weights never enter a trainer's optimiser or
checkpoint; both expose ``text_dim``, ``kind``, ``embed(descriptions)`` and ``to(device)``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.conditioning import one_hot_modality_embedding


class PromptTokenizer(Protocol):
    """What TextConditioner needs of a tokenizer (e.g. ``unisyn_v2.metadata.tokenizer.MetadataTokenizer``)."""

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """LongTensor (B, L) of token ids padded to the context length."""


class Conditioner(Protocol):
    """Common interface of the conditioners."""

    kind: str
    text_dim: int

    def embed(self, descriptions: Sequence[ImageDescription]) -> torch.Tensor:
        """(B, text_dim) float embeddings on the conditioner's device."""

    def to(self, device: torch.device | str) -> "Conditioner":
        """Move to a device and return self."""


class TextConditioner:
    """Frozen NeuroCLIP text side with a prompt -> embedding cache.

    Args:
        tokenizer: object with ``encode_batch(texts) -> LongTensor (B, L)``.
        text_encoder: module mapping token ids (B, L) to (B, text_dim) (``MetadataTextEncoder``).
        normalize: L2-normalise the embeddings (NeuroCLIP compares normalised embeddings).
        device: where the encoder runs and embeddings are returned.
    """

    kind = "text"

    def __init__(self, tokenizer: PromptTokenizer, text_encoder: nn.Module, normalize: bool = True,
                 device: torch.device | str = "cpu") -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.normalize = bool(normalize)
        self.device = torch.device(device)
        self.text_encoder.to(self.device)
        self._freeze()
        self._cache: dict[str, torch.Tensor] = {}
        projection = getattr(text_encoder, "text_projection", None)
        output_dim = getattr(text_encoder, "embed_dim", None) or getattr(text_encoder, "output_dim", None)
        if isinstance(output_dim, int):
            self.text_dim = output_dim
        elif isinstance(projection, nn.Linear):
            self.text_dim = int(projection.out_features)
        else:
            with torch.no_grad():
                self.text_dim = int(self._encode(["Modality: T1w"]).shape[1])

    def _freeze(self) -> None:
        self.text_encoder.eval()
        for parameter in self.text_encoder.parameters():
            parameter.requires_grad_(False)

    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        self._freeze()  # cheap; guards against a caller having switched it to train mode
        with torch.no_grad():
            ids = self.tokenizer.encode_batch(list(prompts)).to(self.device)
            embeddings = self.text_encoder(ids).float()
            if self.normalize:
                embeddings = F.normalize(embeddings, dim=-1)
        return embeddings

    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, text_dim) embeddings of prompt strings (cached).

        Each new prompt is encoded on its own: in a batch, its embedding would depend in the last bits
        on the other prompts (padding, kernel blocking), so a resumed run, whose cache starts empty,
        would condition on slightly different vectors than an uninterrupted one, and prediction than
        training.
        """
        for prompt in dict.fromkeys(p for p in prompts if p not in self._cache):
            self._cache[prompt] = self._encode([prompt])[0]
        if not prompts:
            return torch.zeros((0, self.text_dim), device=self.device)
        return torch.stack([self._cache[p] for p in prompts])

    def embed(self, descriptions: Sequence[ImageDescription]) -> torch.Tensor:
        """(B, text_dim) embeddings of the descriptions' prompts, in the style the encoder was trained on."""
        style = getattr(self.tokenizer, "prompt_style", "compact")
        return self.embed_prompts([d.prompt(style) for d in descriptions])

    def to(self, device: torch.device | str) -> "TextConditioner":
        """Move encoder and cache."""
        self.device = torch.device(device)
        self.text_encoder.to(self.device)
        self._cache = {k: v.to(self.device) for k, v in self._cache.items()}
        return self

    def clear_cache(self) -> None:
        """Forget cached embeddings."""
        self._cache.clear()

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for trainer.json."""
        return {"kind": self.kind, "text_dim": self.text_dim, "normalize": self.normalize}


class OneHotConditioner:
    """Modality one-hot codes over a fixed modality list (TUMSyn's one-hot baseline).

    Args:
        modalities: the vocabulary, in code order (e.g. the plans' modalities).
        device: where embeddings are returned.
    """

    kind = "onehot"

    def __init__(self, modalities: Sequence[str], device: torch.device | str = "cpu") -> None:
        if not modalities:
            raise ValueError("OneHotConditioner needs at least one modality")
        self.modalities = tuple(modalities)
        self._index = {m.lower(): i for i, m in enumerate(self.modalities)}
        if len(self._index) != len(self.modalities):
            raise ValueError(f"duplicate modalities in {list(self.modalities)}")
        self.text_dim = len(self.modalities)
        self.device = torch.device(device)

    def index_of(self, modality: str) -> int:
        """Code index of a modality; unknown modalities name the known ones."""
        try:
            return self._index[modality.lower()]
        except KeyError:
            raise ValueError(f"modality {modality!r} was not seen in training; this one-hot model knows "
                             f"{', '.join(self.modalities)}") from None

    def embed(self, descriptions: Sequence[ImageDescription]) -> torch.Tensor:
        """(B, num_modalities) one-hot rows."""
        indices = [self.index_of(d.modality) for d in descriptions]
        return one_hot_modality_embedding(indices, self.text_dim).to(self.device)

    def to(self, device: torch.device | str) -> "OneHotConditioner":
        """Set the output device."""
        self.device = torch.device(device)
        return self

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for trainer.json."""
        return {"kind": self.kind, "text_dim": self.text_dim, "modalities": list(self.modalities)}
