"""Dimension-generic convolution lookup shared by the 2D (2.5D) and 3D networks."""
from __future__ import annotations

import torch
from torch import nn

_CONVS: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}


def conv_class(dims: int) -> type[nn.Module]:
    """Return nn.Conv2d or nn.Conv3d so one network definition serves both 2.5D and 3D plans."""
    if dims not in _CONVS:
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    return _CONVS[dims]


def broadcast_to_spatial(vector_bc: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a (B, C) per-sample vector as (B, C, 1, ..., 1) so it broadcasts over an ndim feature map."""
    if vector_bc.ndim != 2:
        raise ValueError(f"expected a (B, C) tensor, got shape {tuple(vector_bc.shape)}")
    return vector_bc.reshape(*vector_bc.shape, *([1] * (ndim - 2)))
