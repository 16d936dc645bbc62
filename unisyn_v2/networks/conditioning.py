"""One-hot modality codes: the TUMSyn 'one-hot' baseline feeds these to the GFM in place of text embeddings."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F


def one_hot_modality_embedding(
    indices: Union[torch.Tensor, Sequence[int]], num_modalities: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Return (B, num_modalities) one-hot codes, usable wherever a (B, text_dim) prompt embedding is expected.

    Build the network with ``text_dim = num_modalities``; indices follow the modality vocabulary order.
    """
    idx = torch.as_tensor(indices, dtype=torch.long)
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional (B,), got shape {tuple(idx.shape)}")
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_modalities):
        raise ValueError(f"modality indices must lie in [0, {num_modalities}), got {idx.tolist()}")
    return F.one_hot(idx, num_modalities).to(dtype)
