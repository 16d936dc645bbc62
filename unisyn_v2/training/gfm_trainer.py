"""UniSyn's generative foundation model trainer: prompt arithmetic and the cyclic objective.

Each iteration encodes both images of every (source, target) item into anatomy features
``f0 = (f - beta) / alpha`` with their own prompts, decodes each with the other's prompt
(``f = alpha f0 + beta``) and minimises ``0.1 * L1(f0_s, f0_t) + 1.0 * (L1(t_hat, t) + L1(s_hat, s))``
(lambdas from the plans). The text encoder is NeuroCLIP's, frozen (stage 1 must have run).
"""

from __future__ import annotations

from typing import Any, ClassVar

from unisyn_v2.networks.liif import liif_decoder_of
from unisyn_v2.training.liif_training import liif_train_step
from unisyn_v2.training.losses import GFMCyclicLoss
from unisyn_v2.training.synthesis_trainer import SynthesisTrainer


class GFMTrainer(SynthesisTrainer):
    """GFM with NeuroCLIP text conditioning, trained jointly on every direction of every case."""

    network_kind: ClassVar[str] = "gfm"
    conditioning: ClassVar[str] = "text"

    def build_losses(self) -> None:
        training = self.plans.training
        self.cyclic_loss = GFMCyclicLoss(training.lambda_feature, training.lambda_synthesis, training.feature_loss)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Source -> target and target -> source through the shared anatomy features."""
        decoder = liif_decoder_of(self.network)
        if decoder is not None:  # an implicit decoder: coarse inputs, random fine points (training.liif_training)
            return liif_train_step(self, batch, decoder, cyclic=True)

        def forward(network: Any, b: dict[str, Any]) -> Any:
            anatomy_source = network.encode_anatomy(b["source"], b["source_text"])
            anatomy_target = network.encode_anatomy(b["target"], b["target_text"])
            target_hat = network.decode(anatomy_source, b["target_text"])
            source_hat = network.decode(anatomy_target, b["source_text"])
            return self.cyclic_loss(target_hat, b["target"], source_hat, b["source_clean"],
                                    anatomy_source, anatomy_target, b["weight"], b["source_weight"])

        b = self.batch_to_device(batch)
        with self.autocast():
            terms = self.run_network(forward, b)  # one (DDP) forward for all four network calls
        self.optimize(terms.total)
        return {"loss": float(terms.total.detach()), "feature_loss": float(terms.feature.detach()),
                "synthesis_loss": float(terms.synthesis.detach())}
