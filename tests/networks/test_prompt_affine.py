"""The GFM's prompt -> (alpha, beta) adapter: the paper's linear map or an MLP (``affine_hidden``)."""

from __future__ import annotations

import torch

from unisyn_v2.networks.factory import build_synthesis_network
from unisyn_v2.networks.prompt_affine import PromptAffine


def test_mlp_adapter_keeps_alpha_bounded_and_starts_near_the_identity() -> None:
    torch.manual_seed(0)
    affine = PromptAffine(text_dim=10, feature_dim=6, alpha_min=0.05, hidden=16)
    alpha, beta = affine(torch.randn(32, 10))
    assert alpha.shape == beta.shape == (32, 6)
    assert float(alpha.min()) >= 0.05
    assert torch.allclose(alpha, torch.ones_like(alpha), atol=0.1) and float(beta.abs().max()) < 0.2
    with torch.no_grad():
        affine.linear.weight.mul_(1000.0)
    alpha, _ = affine(torch.randn(32, 10))
    assert float(alpha.min()) >= 0.05  # the bound holds for any weights


def test_mlp_adapter_can_express_an_interaction_a_linear_map_cannot() -> None:
    """alpha = x1 * x2 (a FLAIR null depends on TI and TR together): fitted by the MLP, not by the linear map."""
    torch.manual_seed(1)
    x = torch.rand(256, 2) * 2 - 1
    target = 1.0 + 0.5 * x[:, :1] * x[:, 1:]
    errors = {}
    for hidden in (0, 32):
        affine = PromptAffine(text_dim=2, feature_dim=1, hidden=hidden)
        optimiser = torch.optim.Adam(affine.parameters(), lr=1e-2)
        for _ in range(600):
            optimiser.zero_grad()
            loss = ((affine(x)[0] - target) ** 2).mean()
            loss.backward()
            optimiser.step()
        errors[hidden] = float(loss)
    assert errors[32] < 0.2 * errors[0]


def test_factory_builds_the_gfm_with_either_adapter() -> None:
    kwargs = {"dims": 2, "in_channels": 1, "out_channels": 1, "encoder_width": 8, "num_blocks": 1, "feature_dim": 8,
              "decoder_hidden": [8], "text_dim": 6}
    assert build_synthesis_network("gfm", kwargs).affine.hidden is None
    assert isinstance(build_synthesis_network("gfm", {**kwargs, "affine_hidden": 12}).affine.hidden[0], torch.nn.Linear)
