"""GFM prompt algebra, the cyclic loss, patch metrics, the lr schedule and the conditioners."""
from __future__ import annotations

import pytest
import torch

from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.networks import build_synthesis_network, restyle
from unisyn_v2.networks.conditioners import OneHotConditioner, TextConditioner
from unisyn_v2.networks.text_encoder import MetadataTextEncoder
from unisyn_v2.training.losses import GFMCyclicLoss, brain_weight, patch_psnr, patch_ssim, weighted_l1
from unisyn_v2.training.schedule import StepDecayScheduler, step_decay_lr

KWARGS = {"dims": 2, "in_channels": 4, "out_channels": 4, "encoder_width": 8, "num_blocks": 1, "feature_dim": 6,
          "decoder_hidden": [8], "text_dim": 5}


def test_same_source_and_target_prompt_gives_back_the_source_features() -> None:
    torch.manual_seed(0)
    network = build_synthesis_network("gfm", KWARGS)
    with torch.no_grad():  # a non-trivial affine so the check is not alpha = 1, beta = 0
        network.affine.linear.weight.normal_(std=1.0)
        network.affine.linear.bias.normal_(std=1.0)
    image, prompt, other = torch.randn(2, 4, 8, 8), torch.randn(2, 5), torch.randn(2, 5)
    features = network.encoder(image)
    anatomy = network.encode_anatomy(image, prompt)
    alpha, beta = network.affine(prompt)
    assert torch.allclose(restyle(anatomy, alpha, beta), features, atol=1e-5)
    alpha_t, beta_t = network.affine(other)
    expected = alpha_t[..., None, None] * (features - beta[..., None, None]) / alpha[..., None, None] + beta_t[..., None, None]
    assert torch.allclose(restyle(anatomy, alpha_t, beta_t), expected, atol=1e-5)
    # the full network with T_s == T_t decodes the source's own features
    assert torch.allclose(network(image, prompt, prompt).synthesis, network.decoder(features), atol=1e-5)


def test_cyclic_loss_composition() -> None:
    loss = GFMCyclicLoss(lambda_feature=0.1, lambda_synthesis=1.0, feature_loss="paper")
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    terms = loss(target_hat=ones * 3, target=ones, source_hat=zeros, source=ones * 0.5,
                 anatomy_source=torch.full((2, 3, 4, 4), 2.0), anatomy_target=torch.full((2, 3, 4, 4), -2.0))
    assert terms.synthesis.item() == pytest.approx(2.0 + 0.5)
    assert terms.feature.item() == pytest.approx(4.0)
    assert terms.total.item() == pytest.approx(0.1 * 4.0 + 1.0 * 2.5)
    custom = GFMCyclicLoss(0.5, 2.0, feature_loss="paper")(ones, ones, ones, ones, ones, zeros)
    assert custom.total.item() == pytest.approx(0.5) and custom.synthesis.item() == 0.0


def test_brain_weighted_l1() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    weight = brain_weight(mask, 0.1)
    assert weight.tolist() == [[1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]]
    prediction, target = torch.tensor([[1.0, 0.0, 4.0, 0.0]]), torch.zeros(1, 4)
    assert weighted_l1(prediction, target, weight).item() == pytest.approx((1.0 + 0.4) / 2.2)
    assert weighted_l1(prediction, target).item() == pytest.approx(5.0 / 4)
    assert weighted_l1(prediction, target, brain_weight(mask, 1.0)).item() == pytest.approx(5.0 / 4)
    ones = torch.ones(1, 1, 2, 2)
    terms = GFMCyclicLoss()(ones * 2, ones, ones, ones, ones, ones, weight=brain_weight(torch.tensor([[[[1.0, 0], [0, 0]]]]), 0.0))
    assert terms.synthesis.item() == pytest.approx(1.0)


def test_cyclic_loss_gradients_reach_both_anatomies() -> None:
    a = torch.zeros(1, 2, 3, 3, requires_grad=True)
    b = torch.ones(1, 2, 3, 3, requires_grad=True)
    x = torch.zeros(1, 1, 3, 3)
    GFMCyclicLoss(feature_loss="paper")(x, x, x, x, a, b).total.backward()
    assert torch.allclose(a.grad, torch.full_like(a, -0.1 / a.numel()))
    assert torch.allclose(b.grad, torch.full_like(b, 0.1 / b.numel()))


def test_patch_metrics() -> None:
    target = torch.rand(2, 1, 4, 16, 16)
    assert patch_psnr(target, target).item() == 100.0
    assert patch_psnr(target + 0.1, target).item() == pytest.approx(20.0, abs=1e-3)
    assert patch_ssim(target, target).item() == pytest.approx(1.0, abs=1e-5)
    mask = torch.zeros_like(target)
    mask[:, :, :, :8] = 1
    shifted = target.clone()
    shifted[:, :, :, 8:] += 0.5  # errors outside the mask only
    assert patch_psnr(shifted, target, mask=mask).item() == 100.0
    assert patch_psnr(shifted, target, mask=torch.zeros_like(mask)).item() < 20.0  # empty mask: whole patch
    assert patch_ssim(torch.rand(2, 1, 4, 16, 16), target).item() < 0.5


def test_step_decay_halves_every_third() -> None:
    assert [step_decay_lr(1e-4, e, 300) for e in (0, 99, 100, 199, 200, 299)] == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5]
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = StepDecayScheduler(optimizer, 1e-3, num_epochs=6)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]
    fresh = StepDecayScheduler(optimizer, 1e-3, num_epochs=6)
    fresh.load_state_dict({"epoch": 4})
    assert optimizer.param_groups[0]["lr"] == 2.5e-4


def test_conditioners() -> None:
    t1 = ImageDescription("T1w", ImageMetadata(field_strength=3.0))
    ct = ImageDescription("CT", ImageMetadata(kvp=120.0))
    onehot = OneHotConditioner(["T1w", "CT", "FDG-PET"])
    assert onehot.embed([ct, t1]).tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="T1w, CT, FDG-PET"):
        onehot.embed([ImageDescription("T2w")])
    tokenizer = MetadataTokenizer.default()
    encoder = MetadataTextEncoder(tokenizer.vocab_size, width=16, layers=1, heads=2, embed_dim=12,
                                  eot_token_id=tokenizer.eot_id)
    encoder.train()
    text = TextConditioner(tokenizer, encoder)
    assert text.text_dim == 12 and not encoder.training
    assert all(not p.requires_grad for p in encoder.parameters())
    first = text.embed([t1, ct, t1])
    assert first.shape == (3, 12) and not first.requires_grad
    assert torch.allclose(first[0], first[2]) and not torch.allclose(first[0], first[1])
    assert torch.allclose(first.norm(dim=1), torch.ones(3))
    assert len(text._cache) == 2
    with torch.no_grad():
        encoder.text_projection.weight.zero_()
    assert torch.equal(text.embed([t1]), first[:1])  # served from the cache
