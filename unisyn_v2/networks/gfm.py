"""UniSyn's generative foundation model: encoder, prompt arithmetic (anatomy <-> contrast), pointwise decoder."""
from __future__ import annotations

import torch
from torch import nn

from unisyn_v2.networks.outputs import SynthesisOutput
from unisyn_v2.networks.prompt_affine import PromptAffine, restyle, to_anatomy


class GFMNetwork(nn.Module):
    """I_s, T_s, T_t -> target image, via f_0 = (f_s - beta_s) / alpha_s and f_t = alpha_t f_0 + beta_t.

    The text embeddings are inputs (the NeuroCLIP text encoder is frozen after stage 1 and run outside,
    so its embeddings can be cached), or one-hot modality codes for the one-hot baseline.
    ``encode_anatomy`` and ``decode`` are exposed so cyclic training can reuse one anatomy per image.

    Args:
        encoder: image -> features (B, feature_dim, *spatial), e.g. ResidualImageEncoder.
        affine: prompt embedding -> (alpha, beta), e.g. PromptAffine.
        decoder: features -> image, e.g. PointwiseMLPDecoder.
        refinement: optional module between the restyled features and the decoder (TUMSyn's
            LayerNorm + feed-forward block, :class:`~unisyn_v2.networks.refinement.RefinementBlock`), for
            the ablation that gives the GFM the cross-attention baseline's backbone. The paper's GFM has none.
    """

    def __init__(self, encoder: nn.Module, affine: PromptAffine, decoder: nn.Module,
                 refinement: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.affine = affine
        self.refinement = refinement
        self.decoder = decoder

    def encode_anatomy(self, source: torch.Tensor, source_text: torch.Tensor) -> torch.Tensor:
        """Return the modality-independent features f_0 of the source image."""
        alpha_s, beta_s = self.affine(source_text)
        return to_anatomy(self.encoder(source), alpha_s, beta_s)

    def decoder_input(self, anatomy: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
        """f_0 restyled with the target prompt (and refined, if the network has a refinement block): what the
        decoder reads; an implicit (LIIF) decoder queries it at any point (``networks.liif``)."""
        alpha_t, beta_t = self.affine(target_text)
        restyled = restyle(anatomy, alpha_t, beta_t)
        return restyled if self.refinement is None else self.refinement(restyled)

    def decode(self, anatomy: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
        """Restyle f_0 with the target prompt and decode it to an image (on the anatomy's grid)."""
        return self.decoder(self.decoder_input(anatomy, target_text))

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        """Synthesise the target from (B, C, *spatial) source and (B, text_dim) source/target embeddings."""
        anatomy = self.encode_anatomy(source, source_text)
        return SynthesisOutput(synthesis=self.decode(anatomy, target_text), anatomy=anatomy)
