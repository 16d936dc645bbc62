"""UniSyn's prompt-to-(alpha, beta) mapping and the feature arithmetic that separates anatomy from contrast."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unisyn_v2.networks.conv_ops import broadcast_to_spatial


class PromptAffine(nn.Module):
    """Linear adapter from a prompt embedding (B, text_dim) to per-channel alpha and beta (B, feature_dim).

    UniSyn splits a 1536-d prompt feature into alpha (first 768) and beta (last 768). Here a learned
    ``Linear(text_dim, 2 * feature_dim)`` produces that 1536-d feature (first half -> alpha, second half
    -> beta), which lets any text encoder width (or a one-hot modality code) drive the GFM.

    Because the anatomy is f_0 = (f_s - beta_s) / alpha_s, alpha must never approach zero (or change
    sign): alpha = alpha_min + softplus(raw_alpha), so alpha >= alpha_min for every input and the
    division is bounded by 1 / alpha_min. At initialisation the weights are small (std ``init_std``)
    and the alpha bias is softplus^-1(1 - alpha_min), so alpha starts ~1 and beta ~0, i.e. the
    restyling starts near the identity.

    With ``hidden > 0`` the adapter is an MLP (``Linear -> GELU -> Linear``): alpha and beta can then
    depend on products of parameters (a FLAIR's CSF null depends on TI, TR and the field together; a
    linear map of the value code only adds one function per parameter). ``hidden = 0`` is the paper's
    linear map.

    Args:
        text_dim: prompt embedding size (NeuroCLIP embedding width, or number of modalities for one-hot).
        feature_dim: image feature channels (UniSyn: 768).
        alpha_min: lower bound of alpha (> 0).
        init_std: std of the initial adapter weights.
        hidden: width of the MLP adapter's hidden layer (0: linear, as the paper).
    """

    def __init__(self, text_dim: int, feature_dim: int, alpha_min: float = 0.05, init_std: float = 0.02,
                 hidden: int = 0) -> None:
        super().__init__()
        if not 0.0 < alpha_min < 1.0:
            raise ValueError(f"alpha_min must be in (0, 1) so alpha can start at 1, got {alpha_min}")
        if text_dim < 1 or feature_dim < 1 or hidden < 0:
            raise ValueError(f"text_dim and feature_dim must be >= 1 and hidden >= 0, got {text_dim}, {feature_dim}, {hidden}")
        self.alpha_min = float(alpha_min)
        self.feature_dim = feature_dim
        self.hidden = (nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU()) if hidden else None)
        self.linear = nn.Linear(hidden or text_dim, 2 * feature_dim)
        raw_alpha_at_one = math.log(math.expm1(1.0 - alpha_min))  # softplus^-1(1 - alpha_min)
        with torch.no_grad():
            nn.init.normal_(self.linear.weight, std=init_std)
            self.linear.bias[:feature_dim].fill_(raw_alpha_at_one)
            self.linear.bias[feature_dim:].zero_()

    def forward(self, text_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (alpha, beta), each (B, feature_dim), with alpha >= alpha_min."""
        if text_embedding.ndim != 2:
            raise ValueError(f"expected a (B, text_dim) prompt embedding, got shape {tuple(text_embedding.shape)}")
        features = text_embedding if self.hidden is None else self.hidden(text_embedding)
        raw_alpha, beta = self.linear(features).split(self.feature_dim, dim=1)
        return self.alpha_min + F.softplus(raw_alpha), beta


def to_anatomy(fs: torch.Tensor, alpha_s: torch.Tensor, beta_s: torch.Tensor) -> torch.Tensor:
    """Remove the source contrast: f_0 = (f_s - beta_s) / alpha_s, alpha/beta (B, C) broadcast over space."""
    return (fs - broadcast_to_spatial(beta_s, fs.ndim)) / broadcast_to_spatial(alpha_s, fs.ndim)


def restyle(f0: torch.Tensor, alpha_t: torch.Tensor, beta_t: torch.Tensor) -> torch.Tensor:
    """Apply the target contrast: f_t = alpha_t * f_0 + beta_t, alpha/beta (B, C) broadcast over space."""
    return broadcast_to_spatial(alpha_t, f0.ndim) * f0 + broadcast_to_spatial(beta_t, f0.ndim)
