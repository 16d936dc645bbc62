"""The physics-informed GFM (``gfm_qmri``, issue 22): MR targets rendered from predicted quantitative maps.

Same data, schedule and cyclic objective as :class:`~unisyn_v2.training.gfm_trainer.GFMTrainer`; the
network is :class:`~unisyn_v2.networks.qmri_head.QMRINetwork` and the conditioner appends the sequence
parameters to NeuroCLIP's embedding. An MR synthesis (a rendered signal in PD units) enters the L1 after
a per-item least-squares gain fitted in the brain against its target taken back to raw units over its
p99.5 (``qmri_head.fit_to_target`` with the image's p_low / p_high from the preprocessed properties): the
MRI contract normalises each image by its own brain percentiles, which a training patch cannot see, and
one gain keeps the tissue signal ratios that pin the maps down. Trained on target images only; no
quantitative map is ever a training signal. The patch validation metric uses the same fit; the final
validation and prediction normalise the whole rendered volume like the contract.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from unisyn_v2.contracts.plans import Plans
from unisyn_v2.io_utils import read_json
from unisyn_v2.networks.qmri_head import PhysicsTextConditioner, QMRINetwork, fit_to_target, has_signal_model
from unisyn_v2.training.gfm_trainer import GFMTrainer
from unisyn_v2.training.losses import patch_psnr, patch_ssim, weighted_l1


def _qmri_network(network: Any) -> QMRINetwork | None:
    """The QMRINetwork inside DDP (``module``) and 2.5D (``network``) wrappers, else None."""
    for _ in range(4):
        if isinstance(network, QMRINetwork):
            return network
        network = getattr(network, "module", None) or getattr(network, "network", None)
    return None


class QMRITrainer(GFMTrainer):
    """GFM encoder + quantitative-map head rendering MR targets with the prompt's sequence parameters."""

    short_name: ClassVar[str | None] = "gfm_qmri"
    network_kind: ClassVar[str] = "gfm_qmri"
    conditioning: ClassVar[str] = "text"
    qmap_hidden: ClassVar[tuple[int, ...]] = (64, 64)
    # three compartments whose signals add (grey/white/CSF starts): on the prompt sweep they fixed the CSF the single
    # compartment misread (BENCHMARKS.md); written into trainer.json, so model folders without the key keep one
    qmri_compartments: ClassVar[int] = 3
    _ratios: dict[tuple[str, str], float] | None = None

    def build_conditioner(self) -> Any:
        """NeuroCLIP's text conditioner (stage 1) with the physics numbers appended."""
        return PhysicsTextConditioner(super().build_conditioner())

    def network_info(self) -> dict[str, Any]:
        kwargs = {"qmap_hidden": list(self.qmap_hidden), "qmri_compartments": self.qmri_compartments,
                  **self.config.network_kwargs, **self.network_overrides}
        kwargs["qmap_hidden"] = [int(v) for v in kwargs["qmap_hidden"]]  # plans may set qmap_hidden / qmri_gain
        if self.conditioner is not None:
            kwargs["text_dim"] = int(self.conditioner.text_dim)
        return {"kind": self.network_kind, "kwargs": kwargs}

    @staticmethod
    def build_network_from_plans(plans: Plans, configuration: str, trainer_info: dict[str, Any]) -> nn.Module:
        """The :class:`QMRINetwork` recorded in ``trainer_info["network"]`` (kind ``gfm_qmri``)."""
        network = trainer_info.get("network") or {}
        if network.get("kind") != "gfm_qmri" or not isinstance(network.get("kwargs"), dict):
            raise ValueError(f"trainer_info network must be {{'kind': 'gfm_qmri', 'kwargs': {{...}}}}, got {network!r}")
        return GFMTrainer.build_network_from_plans(plans, configuration, trainer_info)  # the factory's kwargs check

    def low_over_high(self, case_ids: list[str], descriptions: list[Any]) -> torch.Tensor:
        """p_low / p_high of each item's image (its MRI normalisation, from the preprocessed properties)."""
        if self._ratios is None:
            self._ratios = {}
            for case_id in [*self.train_cases, *self.val_cases]:
                channels = read_json(self.data_folder / f"{case_id}.json")["channels"]
                for channel in channels:
                    values = channel.get("normalization", {}).get("values", {})
                    if channel.get("normalization", {}).get("scheme") == "mri_percentile" and values.get("p_high", 0) > 0:
                        self._ratios[(case_id, channel["prompt"])] = max(0.0, values["p_low"] / values["p_high"])
        for case_id, description in zip(case_ids, descriptions):
            if has_signal_model(description) and (case_id, description.prompt()) not in self._ratios:
                raise ValueError(f"{self.data_folder / case_id}.json: field channels.normalization: no MRI percentiles "
                                 f"recorded for the image {description.prompt()!r}")
        return torch.tensor([self._ratios.get((c, d.prompt()), 0.0) for c, d in zip(case_ids, descriptions)],
                            device=self.device)

    def _fitted(self, prediction: Any, target: Any, mask: Any, embedding: Any, ratio: Any, network: Any) -> Any:
        qmri = _qmri_network(network)
        gain = qmri.training_gain(embedding) if qmri is not None else None
        return fit_to_target(prediction, target, mask, QMRINetwork.rendered_items(embedding), ratio, gain)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """The GFM's cyclic step; MR syntheses are rendered, then affinely fitted to their targets."""
        def forward(network: Any, b: dict[str, Any]) -> Any:
            anatomy_source = network.encode_anatomy(b["source"], b["source_text"])
            anatomy_target = network.encode_anatomy(b["target"], b["target_text"])
            target_hat = self._fitted(network.decode(anatomy_source, b["target_text"]), b["target"], b["mask"],
                                      b["target_text"], b["target_ratio"], network)
            source_hat = self._fitted(network.decode(anatomy_target, b["source_text"]), b["source_clean"], b["mask"],
                                      b["source_text"], b["source_ratio"], network)
            return self.cyclic_loss(target_hat, b["target"], source_hat, b["source_clean"], anatomy_source, anatomy_target,
                                    b["weight"], b.get("source_weight", b["weight"]))

        b = self.batch_to_device(batch)
        b["target_ratio"] = self.low_over_high(batch["case_ids"], batch["target_descriptions"])
        b["source_ratio"] = self.low_over_high(batch["case_ids"], batch["source_descriptions"])
        with self.autocast():
            terms = self.run_network(forward, b)
        self.optimize(terms.total)
        return {"loss": float(terms.total.detach()), "feature_loss": float(terms.feature.detach()),
                "synthesis_loss": float(terms.synthesis.detach())}

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Patch metrics as the GFM's, MR syntheses after the affine fit to their targets (as in training)."""
        b = self.batch_to_device(batch)
        with self.autocast():
            raw = self.network(b["source"], b["source_text"], b["target_text"]).synthesis.float()
        ratio = self.low_over_high(batch["case_ids"], batch["target_descriptions"])
        prediction = self._fitted(raw, b["target"], b["mask"], b["target_text"], ratio, self.network)
        return {"loss": float(weighted_l1(prediction, b["target"], b["weight"])),
                "psnr": float(patch_psnr(prediction, b["target"], mask=b["mask"])),
                "ssim": float(patch_ssim(prediction, b["target"]))}
