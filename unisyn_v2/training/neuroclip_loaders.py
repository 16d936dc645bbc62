"""Stage-1 batches: class-balanced image/prompt batches for NeuroCLIP training and validation.

Kept apart from the trainer so that the sampling (which decides which negatives a batch holds) can be
read and tested on its own; the loader state goes into checkpoints for exact resume.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.training.neuroclip_data import (
    ClassBalancedBatchSampler, NeuroCLIPSample, WholeBrainCache, generator_state, positive_pairs, set_generator_state,
)


class TokenCache:
    """Token ids per prompt, computed once; batches are padded to their longest prompt (the encoder masks
    padding, so this equals padding to the full context and is cheaper)."""

    def __init__(self, tokenizer: MetadataTokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            if prompt not in self._ids:
                self._ids[prompt] = self.tokenizer.encode(prompt)
            rows.append(self._ids[prompt])
        out = torch.full((len(rows), max(len(r) for r in rows)), self.tokenizer.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out


def _batch(samples: Sequence[NeuroCLIPSample], cache: WholeBrainCache, tokens: TokenCache,
           rng: np.random.Generator | None, augment: bool) -> dict[str, Any]:
    prompts = [s.prompt for s in samples]
    return {"images": cache.batch(samples, rng if augment else None, flip=augment), "tokens": tokens(prompts),
            "prompts": prompts, "modalities": [s.modality for s in samples]}


class NeuroCLIPTrainLoader:
    """Endless class-balanced training batches ``{"images", "tokens", "prompts", "modalities"}``.

    Its state (sampler and augmentation generators) goes into the checkpoints, so a resumed run draws
    the same batches as an uninterrupted one.
    """

    def __init__(self, samples: Sequence[NeuroCLIPSample], cache: WholeBrainCache, tokens: TokenCache,
                 max_batch_classes: int, seed: int, augment: bool = True, samples_per_class: int = 1) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.tokens = tokens
        self.augment = augment
        self.sampler = ClassBalancedBatchSampler([s.class_key for s in self.samples], max_batch_classes, seed,
                                                 samples_per_class)
        self.rng = np.random.default_rng(seed + 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            indices = self.sampler.next_batch()
            yield _batch([self.samples[i] for i in indices], self.cache, self.tokens, self.rng, self.augment)

    def state_dict(self) -> dict[str, Any]:
        """Sampler and augmentation generator states."""
        return {"sampler": self.sampler.state_dict(), "rng": generator_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sampler.load_state_dict(state["sampler"])
        set_generator_state(self.rng, state["rng"])


class NeuroCLIPValidationLoader:
    """Class-balanced validation batches, the same every epoch (fixed seed, no augmentation)."""

    def __init__(self, samples: Sequence[NeuroCLIPSample], cache: WholeBrainCache, tokens: TokenCache,
                 max_batch_classes: int, seed: int = 0) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.tokens = tokens
        self.max_batch_classes = max_batch_classes
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        sampler = ClassBalancedBatchSampler([s.class_key for s in self.samples], self.max_batch_classes, self.seed)
        while True:
            indices = sampler.next_batch()
            yield _batch([self.samples[i] for i in indices], self.cache, self.tokens, None, False)


def in_batch_accuracy(logits_per_image: torch.Tensor, prompts: Sequence[str]) -> float:
    """Fraction of images whose most similar text in the batch is their own prompt (or an identical one)."""
    positives = positive_pairs(prompts).to(logits_per_image.device)
    best = logits_per_image.argmax(dim=1)
    return float(positives[torch.arange(len(prompts), device=best.device), best].float().mean())
