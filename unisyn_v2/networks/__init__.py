"""unisyn_v2.networks: encoders, text encoder, GFM / cross-attention heads, decoders, baselines, factories."""
from unisyn_v2.networks.clip_image_encoder import ViTImageEncoder3d, VolumeImageEncoder3d
from unisyn_v2.networks.clip_loss import clip_loss
from unisyn_v2.networks.conditioning import one_hot_modality_embedding
from unisyn_v2.networks.cross_attention import CrossAttnSynthesisNetwork
from unisyn_v2.networks.decoders import PointwiseMLPDecoder
from unisyn_v2.networks.factory import (
    build_image_encoder,
    build_neuroclip,
    build_synthesis_network,
    build_text_encoder,
    count_parameters,
    paper_crossattn_kwargs,
    paper_gfm_kwargs,
    paper_image_encoder_kwargs,
    paper_text_encoder_kwargs,
)
from unisyn_v2.networks.gfm import GFMNetwork
from unisyn_v2.networks.neuroclip import NeuroCLIP
from unisyn_v2.networks.outputs import SynthesisOutput
from unisyn_v2.networks.prompt_affine import PromptAffine, restyle, to_anatomy
from unisyn_v2.networks.residual_encoder import ResidualImageEncoder
from unisyn_v2.networks.slice_adapter import SlicesAsChannels
from unisyn_v2.networks.text_encoder import MetadataTextEncoder
from unisyn_v2.networks.unet_baseline import RegressionUNet, build_unet_baseline

__all__ = [
    "CrossAttnSynthesisNetwork", "GFMNetwork", "MetadataTextEncoder", "NeuroCLIP", "PointwiseMLPDecoder",
    "PromptAffine", "RegressionUNet", "ResidualImageEncoder", "SlicesAsChannels", "SynthesisOutput",
    "ViTImageEncoder3d", "VolumeImageEncoder3d", "build_image_encoder", "build_neuroclip",
    "build_synthesis_network", "build_text_encoder", "build_unet_baseline", "clip_loss", "count_parameters",
    "one_hot_modality_embedding", "paper_crossattn_kwargs", "paper_gfm_kwargs", "paper_image_encoder_kwargs",
    "paper_text_encoder_kwargs", "restyle", "to_anatomy",
]
