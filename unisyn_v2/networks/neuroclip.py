"""NeuroCLIP: joint image/metadata-text embedding trained contrastively (UniSyn stage 1)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)


class NeuroCLIP(nn.Module):
    """CLIP over (3D image, metadata prompt) pairs; the text encoder is frozen and reused by the GFM.

    logit_scale = log(1 / temperature) is learned and clamped at ln(100) (CLIP's cap, so the temperature
    never drops below 0.01 and the softmax cannot saturate).

    Args:
        image_encoder: volume (B, C, D, H, W) -> (B, E).
        text_encoder: token ids (B, L) [, eot_positions] -> (B, E).
        init_temperature: initial softmax temperature (CLIP: 0.07).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, init_temperature: float = 0.07) -> None:
        super().__init__()
        if init_temperature < 0.01:
            raise ValueError(f"init_temperature must be >= 0.01 (logit scale cap ln 100), got {init_temperature}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def clamped_logit_scale(self) -> torch.Tensor:
        """log(1/temperature) capped at ln(100)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE)

    def encode_image(self, volume: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, E)."""
        return F.normalize(self.image_encoder(volume), dim=-1)

    def encode_text(self, token_ids: torch.Tensor, eot_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L2-normalised prompt embeddings (B, E); this is what the GFM consumes."""
        return F.normalize(self.text_encoder(token_ids, eot_positions), dim=-1)

    def forward(
        self, volume: torch.Tensor, token_ids: torch.Tensor, eot_positions: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits_per_image, logits_per_text), each (B, B) = scale * cosine similarities."""
        image = self.encode_image(volume)
        text = self.encode_text(token_ids, eot_positions)
        logits_per_image = self.clamped_logit_scale().exp() * image @ text.t()
        return logits_per_image, logits_per_image.t()
