"""Task-specific regression U-Net baseline (nnU-Net's PlainConvUNet with a linear 1x1 output)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from unisyn_v2.networks.conv_ops import conv_class
from unisyn_v2.networks.outputs import SynthesisOutput

IntOrSeq = Union[int, Sequence[int], Sequence[Sequence[int]]]
_INSTANCE_NORMS: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class RegressionUNet(nn.Module):
    """A PlainConvUNet (no deep supervision) behind the synthesis-network call signature.

    The prompts are accepted and ignored (the baseline is trained per source->target task), so trainers
    and the memory estimator call every synthesis network the same way. ``anatomy`` is None.
    """

    def __init__(self, unet: PlainConvUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        source: torch.Tensor,
        source_text: Optional[torch.Tensor] = None,
        target_text: Optional[torch.Tensor] = None,
    ) -> SynthesisOutput:
        """(B, in_channels, *spatial) -> SynthesisOutput((B, out_channels, *spatial), None)."""
        return SynthesisOutput(synthesis=self.unet(source), anatomy=None)


def build_unet_baseline(
    dims: int,
    in_channels: int,
    out_channels: int,
    n_stages: int = 5,
    features_per_stage: Optional[Sequence[int]] = None,
    kernel_sizes: IntOrSeq = 3,
    strides: Optional[IntOrSeq] = None,
    n_conv_per_stage: IntOrSeq = 2,
    n_conv_per_stage_decoder: IntOrSeq = 2,
    max_features: int = 320,
) -> RegressionUNet:
    """Build the baseline with nnU-Net defaults (InstanceNorm, LeakyReLU, He init, conv bias).

    Args:
        dims: 2 (2.5D, slices as channels) or 3.
        in_channels, out_channels: image channels (2.5D: k slices each).
        n_stages: resolution stages; the patch must be divisible by the product of the strides.
        features_per_stage: channels per stage; default min(32 * 2**s, max_features).
        kernel_sizes, strides: per stage (int or per-axis lists); default stride 1 then 2 per stage.
        n_conv_per_stage, n_conv_per_stage_decoder: convolutions per encoder/decoder stage.
        max_features: cap of the default features_per_stage.
    """
    conv = conv_class(dims)
    if n_stages < 2:
        raise ValueError(f"n_stages must be >= 2 for a U-Net, got {n_stages}")
    features = list(features_per_stage) if features_per_stage is not None else [
        min(32 * 2 ** s, max_features) for s in range(n_stages)]
    if len(features) != n_stages:
        raise ValueError(f"features_per_stage needs {n_stages} entries, got {features}")
    strides = strides if strides is not None else [1] + [2] * (n_stages - 1)
    unet = PlainConvUNet(
        input_channels=in_channels,
        n_stages=n_stages,
        features_per_stage=features,
        conv_op=conv,
        kernel_sizes=kernel_sizes,
        strides=strides,
        n_conv_per_stage=n_conv_per_stage,
        num_classes=out_channels,
        n_conv_per_stage_decoder=n_conv_per_stage_decoder,
        conv_bias=True,
        norm_op=_INSTANCE_NORMS[dims],
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    unet.apply(InitWeights_He(1e-2))
    return RegressionUNet(unet)
