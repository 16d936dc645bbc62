"""Stage-2 losses and the patch metrics logged during training.

UniSyn's cyclic objective: in each iteration the source synthesises the target and the target the
source; ``L_f = L1(f0_source, f0_target)`` pulls the two anatomy features together and
``L_s = L1(target_hat, target) + L1(source_hat, source)``; ``L = lambda_f L_f + lambda_s L_s``
(0.1 and 1.0). The paper writes sums; means are used here so the weights do not depend on patch or
feature size (the ratio of the two terms is what the lambdas set).

Synthesis terms take an optional voxel weight (:func:`brain_weight`): 1 inside the loss region and
``background_weight`` outside. The region is the plans' choice per target family: the brain for MRI,
whose background (scalp, bone, air after a normalisation that depends on the brain's own percentiles)
is partly unpredictable, so letting it dominate the L1 wastes capacity; the whole head for CT, where
the skull is the point. With ``background_weight = 1`` the loss is the paper's plain L1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unisyn_v2.contracts.plans import FEATURE_LOSSES


def brain_weight(mask: torch.Tensor, background_weight: float) -> torch.Tensor:
    """Voxel weights: 1 in the brain mask, ``background_weight`` elsewhere (float, mask's shape)."""
    mask = mask.float()
    return mask + background_weight * (1.0 - mask)


def weighted_l1(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error, weighted per voxel when ``weight`` is given (sum(w |e|) / sum(w))."""
    error = (prediction.float() - target.float()).abs()
    if weight is None:
        return error.mean()
    weight = weight.expand_as(error)
    return (weight * error).sum() / weight.sum().clamp_min(1e-8)


@dataclass(frozen=True)
class CyclicLossTerms:
    """The total loss and its parts (tensors, so the total can be back-propagated)."""

    total: torch.Tensor
    feature: torch.Tensor
    synthesis: torch.Tensor




def scale_invariant_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per channel, ``L1(a_c, b_c)`` over the two maps' own spread, averaged over channels.

    The GFM's anatomy is f0 = (f - beta) / alpha, and one affine serves every prompt, so scaling a
    channel's alpha by c (and its beta along) scales and shifts that channel of every f0 while every
    synthesis stays the same (alpha_t f0 + beta_t is unchanged). The paper's plain L1 can therefore be
    cut c-fold without learning anything (issue 16 measured L_f 0.357 -> 0.036 at c = 10). Dividing
    each channel's distance by that channel's spread (std over batch and space, of each map on its own,
    so the difference itself does not count as spread) makes the loss invariant to exactly those
    output-preserving rescalings and shifts.
    """
    a, b = a.float().transpose(0, 1).flatten(1), b.float().transpose(0, 1).flatten(1)  # (C, N)
    spread = 0.5 * (a.std(dim=1) + b.std(dim=1))
    floor = 1e-3 * spread.mean().detach() + 1e-8  # a dead (constant) channel does not explode the loss
    return ((a - b).abs().mean(dim=1) / (spread + floor)).mean()


class GFMCyclicLoss(torch.nn.Module):
    """``lambda_f * L_f(f0_s, f0_t) + lambda_s * (L1(t_hat, t) + L1(s_hat, s))``.

    Args:
        lambda_feature: weight of the anatomy-consistency term (UniSyn: 0.1).
        lambda_synthesis: weight of the synthesis term (UniSyn: 1.0).
        feature_loss: ``scale_invariant`` (default, :func:`scale_invariant_l1`) or ``paper`` (plain L1).
    """

    def __init__(self, lambda_feature: float = 0.1, lambda_synthesis: float = 1.0,
                 feature_loss: str = "scale_invariant") -> None:
        super().__init__()
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {', '.join(FEATURE_LOSSES)}, got {feature_loss!r}")
        self.lambda_feature = float(lambda_feature)
        self.lambda_synthesis = float(lambda_synthesis)
        self.feature_loss = feature_loss

    def forward(self, target_hat: torch.Tensor, target: torch.Tensor, source_hat: torch.Tensor,
                source: torch.Tensor, anatomy_source: torch.Tensor, anatomy_target: torch.Tensor,
                weight: torch.Tensor | None = None, source_weight: torch.Tensor | None = None) -> CyclicLossTerms:
        """``weight`` weighs the target's synthesis, ``source_weight`` the source's (default: ``weight``):
        the loss region follows the family of the image synthesised."""
        source_weight = weight if source_weight is None else source_weight
        if self.feature_loss == "paper":
            feature = F.l1_loss(anatomy_source.float(), anatomy_target.float())
        else:
            feature = scale_invariant_l1(anatomy_source, anatomy_target)
        synthesis = weighted_l1(target_hat, target, weight) + weighted_l1(source_hat, source, source_weight)
        total = self.lambda_feature * feature + self.lambda_synthesis * synthesis
        return CyclicLossTerms(total, feature, synthesis)


def patch_psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of per-sample PSNR (dB) on the normalised scale (in ``mask`` when it has
    voxels); capped at 100 dB."""
    squared = ((prediction.float() - target.float()) ** 2).flatten(1)
    if mask is None:
        mse = squared.mean(1)
    else:
        m = mask.float().expand_as(prediction).flatten(1)
        inside = m.sum(1)
        mse = torch.where(inside > 0, (squared * m).sum(1) / inside.clamp_min(1), squared.mean(1))
    return (10 * torch.log10(data_range**2 / mse.clamp_min(1e-10))).clamp_max(100.0).mean()


def patch_ssim(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, window: int = 7) -> torch.Tensor:
    """Mean 2D SSIM over every (y, x) slice of (B, C, *spatial) patches (uniform window, no border)."""
    x = prediction.float().flatten(0, -3).unsqueeze(1)  # (N, 1, H, W)
    y = target.float().flatten(0, -3).unsqueeze(1)
    if min(x.shape[-2:]) < window:
        window = max(1, min(x.shape[-2:]) // 2 * 2 - 1)
    pool = lambda v: F.avg_pool2d(v, window, stride=1)  # noqa: E731
    ux, uy = pool(x), pool(y)
    vx, vy, vxy = pool(x * x) - ux * ux, pool(y * y) - uy * uy, pool(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim.mean()
