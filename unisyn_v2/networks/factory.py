"""Build every network from JSON-serialisable kwargs (as stored in plans), plus the papers' exact sizes."""
from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Callable, Mapping, Optional, Sequence

from torch import nn

from unisyn_v2.networks.clip_image_encoder import ViTImageEncoder3d, VolumeImageEncoder3d
from unisyn_v2.networks.cross_attention import CrossAttnSynthesisNetwork
from unisyn_v2.networks.decoders import PointwiseMLPDecoder
from unisyn_v2.networks.gfm import GFMNetwork
from unisyn_v2.networks.liif import DECODERS, LIIFDecoder
from unisyn_v2.networks.neuroclip import NeuroCLIP
from unisyn_v2.networks.prompt_affine import PromptAffine
from unisyn_v2.networks.qmri_head import PHYSICS_DIM, QMRINetwork
from unisyn_v2.networks.refinement import RefinementBlock
from unisyn_v2.networks.residual_encoder import ResidualImageEncoder
from unisyn_v2.networks.text_encoder import MetadataTextEncoder
from unisyn_v2.networks.unet_baseline import build_unet_baseline

logger = logging.getLogger(__name__)

PAPER_DECODER_HIDDEN = (2048, 1024, 1024)


def _build_decoder(decoder: str, feature_dim: int, hidden: Sequence[int], out_channels: int, dims: int,
                   liif: dict[str, Any]) -> nn.Module:
    """``conv``: the pointwise decoder on the feature grid; ``liif``: TUMSyn's implicit decoder (3D only)."""
    if decoder == "conv":
        return PointwiseMLPDecoder(feature_dim, tuple(hidden), out_channels, dims)
    if decoder != "liif":
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if dims != 3:
        raise ValueError("decoder 'liif' needs a 3D configuration (dims 3): a 2.5D slab has no z axis to query "
                         "between slices; plan the 3d configuration or use decoder 'conv'")
    return LIIFDecoder(feature_dim, tuple(hidden), out_channels,
                       **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in liif.items()})


def _liif_options(liif_max_scale: Optional[Sequence[float]], liif_queries: Optional[int], liif_profile: Optional[str],
                  liif_local_ensemble: Optional[bool], liif_interpolate_features: Optional[bool] = None,
                  liif_residual: Optional[bool] = None, liif_max_share: Optional[float] = None,
                  liif_unfold: Optional[Sequence[int]] = None) -> dict[str, Any]:
    options = {"max_scale": liif_max_scale, "queries": liif_queries, "profile": liif_profile,
               "local_ensemble": liif_local_ensemble, "interpolate_features": liif_interpolate_features,
               "residual": liif_residual, "max_share": liif_max_share, "unfold": liif_unfold}
    return {k: v for k, v in options.items() if v is not None}


def _build_gfm(*, dims: int, in_channels: int, out_channels: int, encoder_width: int, num_blocks: int,
               feature_dim: int, text_dim: int, decoder_hidden: Sequence[int] = PAPER_DECODER_HIDDEN,
               alpha_min: float = 0.05, encoder_dilations: Optional[Sequence[int]] = None,
               encoder_input_skip: bool = False, refinement_block: bool = False, affine_hidden: int = 0,
               decoder: str = "conv", liif_max_scale: Optional[Sequence[float]] = None, liif_queries: Optional[int] = None,
               liif_profile: Optional[str] = None, liif_local_ensemble: Optional[bool] = None,
               liif_interpolate_features: Optional[bool] = None, liif_residual: Optional[bool] = None,
               liif_max_share: Optional[float] = None, liif_unfold: Optional[Sequence[int]] = None) -> GFMNetwork:
    liif = _liif_options(liif_max_scale, liif_queries, liif_profile, liif_local_ensemble, liif_interpolate_features,
                         liif_residual, liif_max_share, liif_unfold)
    return GFMNetwork(
        encoder=ResidualImageEncoder(in_channels, encoder_width, num_blocks, feature_dim, dims, encoder_dilations,
                                     encoder_input_skip),
        affine=PromptAffine(text_dim, feature_dim, alpha_min=alpha_min, hidden=affine_hidden),
        decoder=_build_decoder(decoder, feature_dim, decoder_hidden, out_channels, dims, liif),
        refinement=RefinementBlock(feature_dim, dims) if refinement_block else None,
    )


def _build_crossattn(*, dims: int, in_channels: int, out_channels: int, encoder_width: int, num_blocks: int,
                     feature_dim: int, text_dim: int, num_heads: int,
                     decoder_hidden: Sequence[int] = PAPER_DECODER_HIDDEN,
                     encoder_dilations: Optional[Sequence[int]] = None,
                     encoder_input_skip: bool = False, refinement_block: bool = True,
                     decoder: str = "conv", liif_max_scale: Optional[Sequence[float]] = None,
                     liif_queries: Optional[int] = None, liif_profile: Optional[str] = None,
                     liif_local_ensemble: Optional[bool] = None, liif_interpolate_features: Optional[bool] = None,
                     liif_residual: Optional[bool] = None,
                     liif_max_share: Optional[float] = None,
                     liif_unfold: Optional[Sequence[int]] = None) -> CrossAttnSynthesisNetwork:
    liif = _liif_options(liif_max_scale, liif_queries, liif_profile, liif_local_ensemble, liif_interpolate_features,
                         liif_residual, liif_max_share, liif_unfold)
    return CrossAttnSynthesisNetwork(
        encoder=ResidualImageEncoder(in_channels, encoder_width, num_blocks, feature_dim, dims, encoder_dilations,
                                     encoder_input_skip),
        text_dim=text_dim, feature_dim=feature_dim, num_heads=num_heads,
        decoder=_build_decoder(decoder, feature_dim, decoder_hidden, out_channels, dims, liif), dims=dims,
        refinement_block=refinement_block,
    )


def build_qmri_network(*, dims: int, in_channels: int, out_channels: int, encoder_width: int, num_blocks: int,
                       feature_dim: int, text_dim: int, decoder_hidden: Sequence[int] = PAPER_DECODER_HIDDEN,
                       alpha_min: float = 0.05, encoder_dilations: Optional[Sequence[int]] = None,
                       encoder_input_skip: bool = False, refinement_block: bool = False, affine_hidden: int = 0,
                       qmap_hidden: Sequence[int] = (64, 64), physics_dim: int = PHYSICS_DIM,
                       qmri_gain: str = "patch", qmri_compartments: int = 1,
                       qmri_compartment_spread: float = 0.0) -> QMRINetwork:
    """The physics-informed GFM (``gfm_qmri``) from the GFM's plans kwargs; ``text_dim`` counts the appended physics
    numbers (:class:`~unisyn_v2.networks.qmri_head.PhysicsTextConditioner`)."""
    if physics_dim != PHYSICS_DIM:
        raise ValueError(f"qMRI network: physics_dim must be {PHYSICS_DIM} (got {physics_dim})")
    if text_dim <= PHYSICS_DIM:
        raise ValueError(f"qMRI network: text_dim {text_dim} must exceed the {PHYSICS_DIM} physics numbers")
    gfm = _build_gfm(
        dims=dims, in_channels=in_channels, out_channels=out_channels, encoder_width=encoder_width,
        num_blocks=num_blocks, feature_dim=feature_dim, text_dim=text_dim - PHYSICS_DIM, decoder_hidden=decoder_hidden,
        alpha_min=alpha_min, encoder_dilations=encoder_dilations, encoder_input_skip=encoder_input_skip,
        refinement_block=refinement_block, affine_hidden=affine_hidden)
    return QMRINetwork(gfm, feature_dim, out_channels, qmap_hidden, dims, qmri_gain, qmri_compartments,
                       qmri_compartment_spread)


SYNTHESIS_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "gfm": _build_gfm,
    "crossattn": _build_crossattn,
    "unet": build_unet_baseline,
    "gfm_qmri": build_qmri_network,
}
IMAGE_ENCODERS: dict[str, Callable[..., nn.Module]] = {"cnn": VolumeImageEncoder3d, "vit": ViTImageEncoder3d}


def _parameter_names(builder: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(builder).parameters)


def _call_with_kwargs(builder: Callable[..., Any], kwargs: Mapping[str, Any], what: str,
                      tolerated: frozenset[str] = frozenset()) -> Any:
    """Call builder(**kwargs) after checking JSON-serialisability, missing and unknown keys.

    Keys in ``tolerated`` (used by a sibling kind) are ignored so one plans dict can serve several kinds.
    """
    try:
        json.dumps(dict(kwargs))
    except TypeError as err:
        raise ValueError(f"{what} kwargs must be JSON-serialisable (ints, floats, lists, strings): {err}") from err
    params = inspect.signature(builder).parameters
    missing = sorted(n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs)
    unknown = sorted(set(kwargs) - set(params) - tolerated)
    if missing or unknown:
        raise ValueError(f"{what}: missing kwargs {missing}, unknown kwargs {unknown}; accepted: {sorted(params)}")
    ignored = sorted(set(kwargs) - set(params))
    if ignored:
        logger.debug("%s: ignoring kwargs used by other kinds: %s", what, ignored)
    return builder(**{k: v for k, v in kwargs.items() if k in params})


def build_synthesis_network(kind: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build a synthesis network ("gfm", "crossattn" or "unet") from plans kwargs.

    Every kind is called as net(source, source_text, target_text) and returns SynthesisOutput.
    Example: build_synthesis_network("gfm", {"dims": 2, "in_channels": 8, "out_channels": 8,
    "encoder_width": 64, "num_blocks": 4, "feature_dim": 64, "decoder_hidden": [128, 64, 64], "text_dim": 32}).
    """
    if kind not in SYNTHESIS_BUILDERS:
        raise ValueError(f"unknown synthesis network kind {kind!r}; known kinds: {sorted(SYNTHESIS_BUILDERS)}")
    tolerated = frozenset().union(*(_parameter_names(b) for b in SYNTHESIS_BUILDERS.values()))
    return _call_with_kwargs(SYNTHESIS_BUILDERS[kind], kwargs, f"synthesis network {kind!r}", tolerated)


def build_text_encoder(kwargs: Mapping[str, Any]) -> MetadataTextEncoder:
    """Build the NeuroCLIP text encoder from MetadataTextEncoder's constructor kwargs."""
    return _call_with_kwargs(MetadataTextEncoder, kwargs, "text encoder")


def build_image_encoder(kwargs: Mapping[str, Any]) -> nn.Module:
    """Build a NeuroCLIP image encoder; kwargs["kind"] is "cnn" or "vit", the rest go to its constructor."""
    kwargs = dict(kwargs)
    kind = kwargs.pop("kind", "cnn")
    if kind not in IMAGE_ENCODERS:
        raise ValueError(f"unknown image encoder kind {kind!r}; known kinds: {sorted(IMAGE_ENCODERS)}")
    return _call_with_kwargs(IMAGE_ENCODERS[kind], kwargs, f"image encoder {kind!r}")


def build_neuroclip(image_kwargs: Mapping[str, Any], text_kwargs: Mapping[str, Any],
                    init_temperature: float = 0.07) -> NeuroCLIP:
    """Build NeuroCLIP; both encoders must share the embedding size."""
    text_encoder = build_text_encoder(text_kwargs)
    image_dim, text_dim = image_kwargs.get("embed_dim", 512), text_encoder.output_dim
    if image_dim != text_dim:
        raise ValueError(f"image embed_dim must match the text embedding size (embed_dim plus any value code), "
                         f"got {image_dim} and {text_dim}")
    return NeuroCLIP(build_image_encoder(image_kwargs), text_encoder, init_temperature)


def paper_gfm_kwargs() -> dict[str, Any]:
    """UniSyn's GFM: 2.5D (8 slices as channels), 24 ResBlocks of 1024 channels, features 768, decoder
    2048-1024-1024-8.

    text_dim is 1536: we take the paper's "prompt -> 1536-d feature" to be the NeuroCLIP embedding
    itself (see paper_text_encoder_kwargs); PromptAffine's Linear(1536 -> 2 * 768) then yields alpha
    (first 768) and beta (last 768). That Linear is our addition (the paper splits the feature directly);
    it keeps alpha positive and costs 2.4 M of the ~459 M parameters.
    """
    return {"dims": 2, "in_channels": 8, "out_channels": 8, "encoder_width": 1024, "num_blocks": 24,
            "feature_dim": 768, "decoder_hidden": list(PAPER_DECODER_HIDDEN), "text_dim": 1536, "alpha_min": 0.05}


def paper_crossattn_kwargs() -> dict[str, Any]:
    """The ablation baseline of UniSyn Table 2: the GFM's encoder/decoder with cross-attention fusion."""
    kwargs = paper_gfm_kwargs()
    kwargs.pop("alpha_min")
    return {**kwargs, "num_heads": 8}


def paper_text_encoder_kwargs(vocab_size: int = 49408, pad_token_id: int = 0,
                              eot_token_id: int = 49407) -> dict[str, Any]:
    """TUMSyn's CLIP text transformer (512 wide, 12 layers, 8 heads) with UniSyn's 224-token context.

    Defaults are CLIP BPE ids; pass the project tokenizer's. embed_dim 1536 feeds the GFM (paper_gfm_kwargs).
    """
    return {"vocab_size": vocab_size, "context_length": 224, "width": 512, "layers": 12, "heads": 8,
            "embed_dim": 1536, "causal": False, "pad_token_id": pad_token_id, "eot_token_id": eot_token_id}


def paper_image_encoder_kwargs() -> dict[str, Any]:
    """TUMSyn's BMLIP image side: ViT-B/16 adapted to 3D on 96^3 crops, embedding matched to the text side."""
    return {"kind": "vit", "img_size": 96, "patch_size": 16, "in_channels": 1, "width": 768, "layers": 12,
            "heads": 12, "embed_dim": 1536}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
