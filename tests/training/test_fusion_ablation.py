"""The controlled ablation of UniSyn's Table 2 (issue 16): the same backbone with only the fusion swapped."""

from __future__ import annotations

import torch

from unisyn_v2.networks.factory import build_synthesis_network
from unisyn_v2.networks.refinement import RefinementBlock
from unisyn_v2.models.registry import resolve_trainer_class

TINY = {"dims": 2, "in_channels": 2, "out_channels": 2, "encoder_width": 8, "num_blocks": 1, "feature_dim": 8,
        "decoder_hidden": [8], "text_dim": 6, "num_heads": 2}


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _backbone(network: torch.nn.Module) -> int:
    """Parameters outside the fusion: encoder, refinement block (if any) and decoder."""
    refinement = getattr(network, "refinement", None)
    if refinement is None and getattr(network, "refinement_block", False):
        refinement = torch.nn.ModuleList([network.gate_norm, network.feed_forward, network.output_norm])
    return _count(network.encoder) + _count(refinement) + _count(network.decoder)


def test_both_pairings_share_their_backbone_exactly() -> None:
    gfm = build_synthesis_network("gfm", TINY)
    plain = build_synthesis_network("crossattn", {**TINY, "refinement_block": False})
    gfm_block = build_synthesis_network("gfm", {**TINY, "refinement_block": True})
    crossattn = build_synthesis_network("crossattn", TINY)
    assert gfm.refinement is None and not hasattr(plain, "feed_forward")
    assert isinstance(gfm_block.refinement, RefinementBlock)
    assert _backbone(gfm) == _backbone(plain)
    assert _backbone(gfm_block) == _backbone(crossattn) > _backbone(gfm)


def test_plain_cross_attention_fuses_by_the_gate_alone() -> None:
    torch.manual_seed(0)
    plain = build_synthesis_network("crossattn", {**TINY, "refinement_block": False}).eval()
    features, text = torch.randn(3, 8, 5, 5), torch.randn(3, 6)
    gate = plain.channel_gate(features, text)
    torch.testing.assert_close(plain.fuse(features, text), features * gate[..., None, None])


def test_gfm_with_the_block_refines_the_restyled_features_before_decoding() -> None:
    torch.manual_seed(1)
    net = build_synthesis_network("gfm", {**TINY, "refinement_block": True}).eval()
    x, source_text, target_text = torch.randn(2, 2, 6, 6), torch.randn(2, 6), torch.randn(2, 6)
    anatomy = net.encode_anatomy(x, source_text)
    alpha, beta = net.affine(target_text)
    restyled = alpha[..., None, None] * anatomy + beta[..., None, None]
    torch.testing.assert_close(net(x, source_text, target_text).synthesis, net.decoder(net.refinement(restyled)))


def test_ablation_trainers_are_registered_with_their_overrides() -> None:
    plain, block = resolve_trainer_class("crossattn_plain"), resolve_trainer_class("gfm_block")
    assert plain.network_kind == "crossattn" and plain.network_overrides == {"refinement_block": False}
    assert block.network_kind == "gfm" and block.network_overrides == {"refinement_block": True}
    assert resolve_trainer_class("gfm").network_overrides == {}
