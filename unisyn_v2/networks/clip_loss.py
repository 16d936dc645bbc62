"""Symmetric InfoNCE (CLIP) loss used to train NeuroCLIP."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropies with the diagonal as the positives.

    Pairs (i, i) match; every other sample in the batch is a negative, which is why NeuroCLIP batches
    hold one sample per metadata class (no duplicate prompts in a batch).
    """
    if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"logits must be square (B, B), got shape {tuple(logits_per_image.shape)}")
    if logits_per_text.shape != logits_per_image.shape:
        raise ValueError(f"logits_per_text shape {tuple(logits_per_text.shape)} != {tuple(logits_per_image.shape)}")
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))
