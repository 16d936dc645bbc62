"""The output type every synthesis network returns, so trainers treat GFM, cross-attention and U-Net alike."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class SynthesisOutput(NamedTuple):
    """Synthesised target image and the feature map the anatomy (cycle) loss compares.

    Attributes:
        synthesis: (B, out_channels, *spatial) synthesised target.
        anatomy: (B, feature_dim, *spatial) modality-independent features (GFM: f_0; cross-attention:
            the encoder features); None for networks without such a representation (U-Net baseline).
    """

    synthesis: torch.Tensor
    anatomy: Optional[torch.Tensor]
