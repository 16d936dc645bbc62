"""Tests for unisyn_v2.networks: shapes, prompt algebra, text pooling, CLIP loss, factory, paper sizes."""
from __future__ import annotations

import math

import pytest
import torch

from unisyn_v2.networks import (
    CrossAttnSynthesisNetwork,
    GFMNetwork,
    MetadataTextEncoder,
    PointwiseMLPDecoder,
    PromptAffine,
    ResidualImageEncoder,
    SlicesAsChannels,
    SynthesisOutput,
    ViTImageEncoder3d,
    VolumeImageEncoder3d,
    build_neuroclip,
    build_synthesis_network,
    build_text_encoder,
    clip_loss,
    count_parameters,
    one_hot_modality_embedding,
    paper_gfm_kwargs,
    restyle,
    to_anatomy,
)

TINY = {"dims": 2, "in_channels": 8, "out_channels": 8, "encoder_width": 16, "num_blocks": 2,
        "feature_dim": 12, "decoder_hidden": [24, 16, 16], "text_dim": 6, "num_heads": 4}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _spatial(dims: int) -> tuple[int, ...]:
    return (10, 12) if dims == 2 else (6, 8, 5)


@pytest.mark.parametrize("dims", [2, 3])
def test_encoder_and_decoder_keep_resolution(dims: int) -> None:
    x = torch.randn(2, 3, *_spatial(dims))
    features = ResidualImageEncoder(3, width=8, num_blocks=2, feature_dim=5, dims=dims)(x)
    assert features.shape == (2, 5, *_spatial(dims))
    out = PointwiseMLPDecoder(5, hidden=(7, 6, 6), out_channels=2, dims=dims)(features)
    assert out.shape == (2, 2, *_spatial(dims))


@pytest.mark.parametrize("dilations", [None, (1, 2, 4)])
def test_encoder_receptive_field_matches_the_gradient_footprint(dilations: tuple[int, ...] | None) -> None:
    encoder = ResidualImageEncoder(2, width=8, num_blocks=3, feature_dim=4, dims=2, dilations=dilations)
    x = torch.randn(4, 2, 61, 61, requires_grad=True)
    encoder(x)[:, :, 30, 30].abs().sum().backward()
    touched = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)))  # columns that reach the centre output
    assert touched.max() - touched.min() + 1 == encoder.receptive_field
    assert encoder.receptive_field == (3 + 4 * 3 if dilations is None else 3 + 4 * 7)
    assert encoder(torch.randn(1, 2, 20, 24)).shape == (1, 4, 20, 24)


def test_encoder_rejects_dilations_that_do_not_match_the_blocks() -> None:
    with pytest.raises(ValueError, match="dilations"):
        ResidualImageEncoder(2, width=8, num_blocks=3, feature_dim=4, dilations=(1, 2))
    with pytest.raises(ValueError, match="dilations"):
        ResidualImageEncoder(2, width=8, num_blocks=2, feature_dim=4, dilations=(1, 0))


@pytest.mark.parametrize("dims", [2, 3])
def test_encoder_input_skip_carries_the_voxel_intensity_past_every_relu(dims: int) -> None:
    encoder = ResidualImageEncoder(3, width=8, num_blocks=2, feature_dim=3, dims=dims, input_skip=True)
    with torch.no_grad():  # projection: trunk ignored, input copied channel by channel
        encoder.projection.weight.zero_()
        encoder.projection.bias.zero_()
        for c in range(3):
            encoder.projection.weight[c, 8 + c] = 1.0
    x = torch.randn(2, 3, *_spatial(dims))  # negative values too: a path through a ReLU would clip them
    torch.testing.assert_close(encoder(x), x)
    plain = ResidualImageEncoder(3, width=8, num_blocks=2, feature_dim=3, dims=dims)
    assert count_parameters(encoder) - count_parameters(plain) == 3 * 3  # in_channels x feature_dim
    assert encoder.receptive_field == plain.receptive_field


@pytest.mark.parametrize("kind", ["gfm", "crossattn"])
def test_factory_passes_the_encoder_input_skip(kind: str) -> None:
    net = build_synthesis_network(kind, {**TINY, "encoder_input_skip": True})
    assert net.encoder.input_skip and net.encoder.projection.in_channels == 16 + 8
    assert not build_synthesis_network(kind, TINY).encoder.input_skip


@pytest.mark.parametrize("kind", ["gfm", "crossattn"])
@pytest.mark.parametrize("dims", [2, 3])
def test_synthesis_networks_output_shapes(kind: str, dims: int) -> None:
    in_ch = 8 if dims == 2 else 1
    net = build_synthesis_network(kind, {**TINY, "dims": dims, "in_channels": in_ch, "out_channels": in_ch})
    source, text = torch.randn(2, in_ch, *_spatial(dims)), torch.randn(2, 6)
    out = net(source, text, torch.randn(2, 6))
    assert isinstance(out, SynthesisOutput)
    assert out.synthesis.shape == source.shape
    assert out.anatomy.shape == (2, 12, *_spatial(dims))
    out.synthesis.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_anatomy_then_restyle_with_same_prompt_is_identity() -> None:
    fs = torch.randn(3, 4, 5, 6)
    alpha, beta = torch.rand(3, 4) + 0.1, torch.randn(3, 4)
    f0 = to_anatomy(fs, alpha, beta)
    assert torch.allclose(f0 * alpha[:, :, None, None] + beta[:, :, None, None], fs, atol=1e-5)
    assert torch.allclose(restyle(f0, alpha, beta), fs, atol=1e-5)


def test_gfm_with_identical_prompts_reproduces_encoder_features() -> None:
    net = build_synthesis_network("gfm", TINY)
    affine: PromptAffine = net.affine
    with torch.no_grad():  # make alpha/beta far from the (1, 0) initialisation
        affine.linear.weight.normal_(std=2.0)
        affine.linear.bias.normal_(std=2.0)
    source, text = torch.randn(2, 8, 10, 12), torch.randn(2, 6)
    with torch.no_grad():
        out = net(source, text, text)
        features = net.encoder(source)
        assert torch.allclose(restyle(out.anatomy, *affine(text)), features, atol=1e-4)
        assert torch.allclose(out.synthesis, net.decoder(features), atol=1e-4)


def test_alpha_starts_near_one_and_stays_above_alpha_min() -> None:
    affine = PromptAffine(text_dim=5, feature_dim=7, alpha_min=0.05)
    alpha, beta = affine(torch.nn.functional.normalize(torch.randn(4, 5), dim=1))
    assert torch.allclose(alpha, torch.ones_like(alpha), atol=0.1)
    assert beta.abs().max() < 0.1
    extreme = torch.tensor([[1e6] * 5, [-1e6] * 5, [1e30, -1e30, 0.0, 1e-30, -3e4]])
    alpha, beta = affine(extreme)
    assert torch.isfinite(alpha).all() and (alpha >= 0.05).all()
    assert torch.isfinite(to_anatomy(torch.ones(3, 7, 2, 2), alpha, torch.zeros_like(alpha))).all()
    with pytest.raises(ValueError):
        PromptAffine(5, 7, alpha_min=0.0)


def test_one_hot_conditioning_drives_the_gfm() -> None:
    codes = one_hot_modality_embedding([0, 2], num_modalities=3)
    assert torch.equal(codes, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError):
        one_hot_modality_embedding([3], num_modalities=3)
    net = build_synthesis_network("gfm", {**TINY, "text_dim": 3})
    assert net(torch.randn(2, 8, 8, 8), codes, codes.flip(0)).synthesis.shape == (2, 8, 8, 8)


def test_cross_attention_ignores_source_prompt_and_uses_target() -> None:
    net: CrossAttnSynthesisNetwork = build_synthesis_network("crossattn", TINY).eval()
    x, t = torch.randn(2, 8, 6, 6), torch.randn(2, 6)
    with torch.no_grad():
        a = net(x, torch.randn(2, 6), t).synthesis
        b = net(x, None, t).synthesis
        c = net(x, None, t + 3.0).synthesis
    assert torch.allclose(a, b)
    assert not torch.allclose(a, c)


def test_cross_attention_gate_is_an_attention_pool_over_locations() -> None:
    net: CrossAttnSynthesisNetwork = build_synthesis_network("crossattn", TINY).eval()
    features, text = torch.randn(2, 12, 5, 7), torch.randn(2, 6)
    shuffled = features.flatten(2)[:, :, torch.randperm(35)].reshape(features.shape)
    with torch.no_grad():
        gate = net.channel_gate(features, text)
        assert gate.shape == (2, 12)
        # a pool over locations: where each location sits does not matter, only which channels it holds
        torch.testing.assert_close(net.channel_gate(shuffled, text), gate)
        # the attention weights sum to one, so a constant map pools to its own value vector
        constant = features[:, :, :1, :1].expand_as(features)
        value = net.attention.key_value(constant[:, :, 0, 0])[:, 12:]
        torch.testing.assert_close(net.channel_gate(constant, text), net.attention.projection(value))
        assert not torch.allclose(net.channel_gate(features, text + 1.0), gate)


def test_cross_attention_gate_multiplies_the_features() -> None:
    net: CrossAttnSynthesisNetwork = build_synthesis_network("crossattn", TINY).eval()
    features, text = torch.randn(2, 12, 5, 7), torch.randn(2, 6)
    with torch.no_grad():
        net.feed_forward.project_out.weight.zero_()  # leave the gate and the two norms
        gate = net.channel_gate(features, text)
        layer_norm = lambda x: torch.nn.functional.layer_norm(x.movedim(1, -1), (12,)).movedim(-1, 1)  # noqa: E731
        expected = layer_norm(layer_norm(features * gate[:, :, None, None]))
        torch.testing.assert_close(net.fuse(features, text), expected)


def test_slices_as_channels_adapter_round_trips_3d_patches() -> None:
    net = SlicesAsChannels(build_synthesis_network("gfm", TINY))
    out = net(torch.randn(2, 1, 8, 10, 12), torch.randn(2, 6), torch.randn(2, 6))
    assert out.synthesis.shape == (2, 1, 8, 10, 12)


def _text_encoder(causal: bool = False) -> MetadataTextEncoder:
    return MetadataTextEncoder(vocab_size=20, context_length=16, width=16, layers=2, heads=2, embed_dim=8,
                               causal=causal, pad_token_id=0, eot_token_id=19).eval()


def test_text_encoder_rejects_too_long_input() -> None:
    enc = _text_encoder()
    assert enc(torch.randint(1, 19, (2, 16)), eot_positions=torch.tensor([15, 3])).shape == (2, 8)
    with pytest.raises(ValueError, match="context_length"):
        enc(torch.randint(1, 19, (2, 17)))


@pytest.mark.parametrize("causal", [False, True])
def test_text_encoder_pools_at_eot_and_ignores_what_follows(causal: bool) -> None:
    enc = _text_encoder(causal)
    tokens = torch.tensor([[1, 5, 6, 7, 19, 0, 0, 0], [1, 8, 19, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        ref = enc(tokens)
        changed = tokens.clone()
        changed[0, 5:] = torch.tensor([3, 4, 5])  # non-pad tokens after the EOT
        changed[1, 3:] = 7
        assert torch.allclose(enc(changed), ref, atol=1e-5)
        assert torch.allclose(enc(tokens[:, :6]), ref, atol=1e-5)  # less padding
        assert torch.allclose(enc(tokens, eot_positions=torch.tensor([4, 2])), ref, atol=1e-6)
        before = tokens.clone()
        before[0, 2] = 9  # a token before the EOT matters
        assert not torch.allclose(enc(before)[0], ref[0])
    with pytest.raises(ValueError, match="eot_token_id"):
        enc(torch.ones(1, 5, dtype=torch.long))


def test_clip_loss_known_values() -> None:
    b = 5
    aligned = 100.0 * torch.eye(b)
    assert clip_loss(aligned, aligned.t()) < 1e-6
    uniform = torch.zeros(b, b)
    assert math.isclose(clip_loss(uniform, uniform).item(), math.log(b), rel_tol=1e-6)
    with pytest.raises(ValueError):
        clip_loss(torch.zeros(2, 3), torch.zeros(3, 2))


def test_neuroclip_logit_scale_is_clamped_and_embeddings_normalised() -> None:
    text = {"vocab_size": 20, "context_length": 12, "width": 16, "layers": 1, "heads": 2, "embed_dim": 8,
            "eot_token_id": 19}
    model = build_neuroclip({"kind": "cnn", "widths": [4, 8], "embed_dim": 8}, text)
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    volumes, tokens = torch.randn(3, 1, 16, 16, 16), torch.tensor([[1, 2, 19], [1, 3, 19], [1, 4, 19]])
    assert torch.allclose(model.encode_text(tokens).norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    logits_per_image, logits_per_text = model(volumes, tokens)
    assert torch.equal(logits_per_text, logits_per_image.t())
    assert logits_per_image.abs().max() <= 100.0 + 1e-4
    assert math.isclose(model.clamped_logit_scale().item(), math.log(100.0), rel_tol=1e-6)
    clip_loss(logits_per_image, logits_per_text).backward()


def test_clip_image_encoders_shapes() -> None:
    x = torch.randn(2, 1, 32, 32, 32)
    assert VolumeImageEncoder3d(widths=(4, 8, 8), embed_dim=6)(x).shape == (2, 6)
    vit = ViTImageEncoder3d(img_size=32, patch_size=16, width=16, layers=1, heads=2, embed_dim=6)
    assert vit(x).shape == (2, 6)
    with pytest.raises(ValueError):
        ViTImageEncoder3d(img_size=40, patch_size=16)


def test_unet_baseline_shapes() -> None:
    net2d = build_synthesis_network("unet", {"dims": 2, "in_channels": 8, "out_channels": 8, "n_stages": 3,
                                             "features_per_stage": [4, 8, 8]})
    assert net2d(torch.randn(2, 8, 16, 16)).synthesis.shape == (2, 8, 16, 16)
    net3d = build_synthesis_network("unet", {"dims": 3, "in_channels": 1, "out_channels": 1, "n_stages": 3,
                                             "features_per_stage": [4, 8, 8]})
    out = net3d(torch.randn(1, 1, 8, 16, 16), None, None)
    assert out.synthesis.shape == (1, 1, 8, 16, 16) and out.anatomy is None


def test_factory_rejects_bad_kinds_and_kwargs() -> None:
    with pytest.raises(ValueError, match="known kinds.*crossattn.*gfm.*unet"):
        build_synthesis_network("diffusion", TINY)
    with pytest.raises(ValueError, match="unknown kwargs.*encoder_widht"):
        build_synthesis_network("gfm", {**TINY, "encoder_widht": 3})
    with pytest.raises(ValueError, match="missing kwargs.*num_heads"):
        build_synthesis_network("crossattn", {k: v for k, v in TINY.items() if k != "num_heads"})
    with pytest.raises(ValueError, match="JSON"):
        build_synthesis_network("gfm", {**TINY, "text_dim": torch.tensor(6)})
    assert isinstance(build_synthesis_network("gfm", TINY), GFMNetwork)  # num_heads tolerated
    with pytest.raises(ValueError, match="embed_dim"):
        build_neuroclip({"kind": "cnn", "embed_dim": 8}, {"vocab_size": 10, "embed_dim": 16})
    assert isinstance(build_text_encoder({"vocab_size": 10, "width": 8, "layers": 1, "heads": 2}),
                      MetadataTextEncoder)


def test_paper_gfm_parameter_count_on_meta_device() -> None:
    kwargs = paper_gfm_kwargs()
    with torch.device("meta"):
        net = build_synthesis_network("gfm", kwargs)
    assert next(net.parameters()).is_meta

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + c_out

    stem = conv(8, 1024, 3)
    blocks = 24 * 2 * conv(1024, 1024, 3)
    projection = conv(1024, 768, 1)
    decoder = conv(768, 2048, 1) + conv(2048, 1024, 1) + conv(1024, 1024, 1) + conv(1024, 8, 1)
    affine = 1536 * 2 * 768 + 2 * 768
    expected = stem + blocks + projection + decoder + affine
    assert count_parameters(net) == expected == 460_987_656
    assert 4e8 < expected < 5e8  # "hundreds of millions": the 24 x 1024-wide 3x3 convs dominate
    assert count_parameters(net.encoder) > 0.98 * 4.53e8
