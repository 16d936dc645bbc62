"""The cyclic feature loss has no alpha-inflation shortcut (issue 16), and ``paper`` keeps UniSyn's L1."""

from __future__ import annotations

import pytest
import torch

from unisyn_v2.networks.factory import build_synthesis_network
from unisyn_v2.training.losses import GFMCyclicLoss, scale_invariant_l1

TINY = {"dims": 2, "in_channels": 1, "out_channels": 1, "encoder_width": 8, "num_blocks": 1, "feature_dim": 8,
        "decoder_hidden": [8], "text_dim": 6}


def _terms(network: torch.nn.Module, loss: GFMCyclicLoss, alpha_factor: float) -> tuple[torch.Tensor, ...]:
    """Loss terms and the synthesis after multiplying every alpha by ``alpha_factor``."""
    affine = network.affine
    original = affine.forward

    def inflated(text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = original(text)
        return alpha * alpha_factor, beta

    affine.forward = inflated  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        source, target = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
        text_s, text_t = torch.randn(2, 6), torch.randn(2, 6)
        with torch.no_grad():
            anatomy_s = network.encode_anatomy(source, text_s)
            anatomy_t = network.encode_anatomy(target, text_t)
            target_hat, source_hat = network.decode(anatomy_s, text_t), network.decode(anatomy_t, text_s)
            terms = loss(target_hat, target, source_hat, source, anatomy_s, anatomy_t)
    finally:
        affine.forward = original  # type: ignore[method-assign]
    return terms.feature, terms.synthesis, target_hat


def test_inflating_alpha_cuts_the_paper_loss_but_not_the_scale_invariant_one() -> None:
    torch.manual_seed(1)
    network = build_synthesis_network("gfm", TINY).eval()
    paper, invariant = GFMCyclicLoss(feature_loss="paper"), GFMCyclicLoss()
    f_paper, s_paper, out = _terms(network, paper, 1.0)
    f_paper10, s_paper10, out10 = _terms(network, paper, 10.0)
    torch.testing.assert_close(out10, out, atol=1e-5, rtol=1e-4)  # no output changed ...
    assert float(f_paper10) < 0.15 * float(f_paper)  # ... yet the paper's L_f fell about 10-fold
    f_inv, _, _ = _terms(network, invariant, 1.0)
    f_inv10, _, _ = _terms(network, invariant, 10.0)
    assert float(f_inv10) == pytest.approx(float(f_inv), rel=1e-3)


def test_scale_invariant_l1_ignores_a_common_scale_and_shift_but_sees_differences() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)
    base = scale_invariant_l1(a, b)
    assert float(scale_invariant_l1(3.0 * a + 7.0, 3.0 * b + 7.0)) == pytest.approx(float(base), rel=1e-4)
    per_channel = torch.linspace(0.5, 8.0, 8)[None, :, None, None]  # what one channel's alpha can do alone
    shift = torch.linspace(-3.0, 3.0, 8)[None, :, None, None]
    assert float(scale_invariant_l1(a * per_channel + shift, b * per_channel + shift)) == pytest.approx(float(base), rel=5e-3)
    assert float(scale_invariant_l1(a, a)) == 0.0
    assert float(scale_invariant_l1(a, a + 0.1 * b)) < float(base)


def test_unknown_feature_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_loss"):
        GFMCyclicLoss(feature_loss="l2")


def test_scale_invariant_gradients_pull_the_anatomies_together() -> None:
    torch.manual_seed(3)
    a = torch.randn(2, 4, 6, 6, requires_grad=True)
    b = (a.detach() + 0.5 * torch.randn(2, 4, 6, 6)).requires_grad_(True)
    scale_invariant_l1(a, b).backward()
    assert float((a.grad * (b - a).detach()).sum()) < 0 and float((b.grad * (a - b).detach()).sum()) < 0

