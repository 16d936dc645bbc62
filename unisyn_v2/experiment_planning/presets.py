"""Network and schedule presets: ``paper`` (UniSyn's exact sizes) and budget presets for small GPUs and CPU.

Budget presets scale width, depth and patch down; the planner then fits patch and batch to the memory
at hand. ``paper`` is fixed: it reproduces the paper's sizes (24 residual blocks of 1024 channels,
768-d features, decoder 2048/1024/1024, 8x64x64 slabs, batch 8) whatever the budget, and records
the estimated memory so a user sees whether it fits. The reasons behind the CPU preset's values are in
docs/PRESETS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unisyn_v2.contracts.plans import NeuroCLIPPlan, TextEncoderPlan, TrainingPlan


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Sizes a planner starts from (keyword-only: a preset reads as a list of named choices).

    Why each CPU value is what it is (measurements) lives in docs/PRESETS.md, not here.
    """

    name: str
    encoder_width: int  # channels of the residual encoder's trunk
    num_blocks: int  # residual blocks in the encoder
    feature_dim: int  # channels of the anatomy features f0 the prompt restyles
    decoder_hidden: tuple[int, ...]  # widths of the decoder's hidden layers
    num_heads: int  # attention heads of the cross-attention fusion
    text_encoder: TextEncoderPlan
    neuroclip: NeuroCLIPPlan
    training: TrainingPlan
    slab_patch: tuple[int, int, int] = (8, 64, 64)
    volume_patch: tuple[int, int, int] = (64, 64, 64)
    max_batch_size: int = 64
    fixed: bool = False  # True: sizes are not fitted to the memory at hand (the paper's)
    unet_base_features: int = 32
    unet_max_features: int = 320
    min_inplane_patch: int = 16
    encoder_dilations: tuple[int, ...] | None = None  # one per residual block; None: undilated, as the paper
    encoder_input_skip: bool = False  # the encoder's projection also sees the input; False: as the paper
    affine_hidden: int = 0  # hidden width of the GFM's prompt -> (alpha, beta) adapter; 0: linear, as the paper
    description: str = field(default="", compare=False)


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        name="cpu", encoder_width=32, num_blocks=4, feature_dim=64, decoder_hidden=(128, 64, 64), num_heads=4,
        text_encoder=TextEncoderPlan(context_length=224, width=64, layers=2, heads=4, embed_dim=64),
        neuroclip=NeuroCLIPPlan(image_size=(32, 32, 32), downsample=2, image_widths=(16, 32, 64), num_epochs=30,
                                iterations_per_epoch=20, initial_lr=1e-3, max_batch_classes=32),
        training=TrainingPlan(num_epochs=150, iterations_per_epoch=25, validation_iterations=4, initial_lr=1e-3),
        encoder_dilations=(1, 2, 4, 8), encoder_input_skip=True,
        slab_patch=(4, 48, 48), volume_patch=(32, 32, 32), max_batch_size=4,
        unet_base_features=8, unet_max_features=64,
        description="tiny networks that train in minutes on 2 CPU cores",
    ),
    "small": Preset(
        name="small", encoder_width=128, num_blocks=12, feature_dim=128, decoder_hidden=(256, 128, 128), num_heads=4,
        text_encoder=TextEncoderPlan(width=256, layers=4, heads=4, embed_dim=256),
        neuroclip=NeuroCLIPPlan(image_size=(64, 64, 64), image_widths=(32, 64, 128, 256), num_epochs=100,
                                iterations_per_epoch=50, initial_lr=3e-4),
        training=TrainingPlan(num_epochs=150, iterations_per_epoch=250, initial_lr=2e-4),
        description="8-16 GB GPUs",
    ),
    "medium": Preset(
        name="medium", encoder_width=256, num_blocks=24, feature_dim=256, decoder_hidden=(512, 256, 256), num_heads=8,
        text_encoder=TextEncoderPlan(width=512, layers=8, heads=8, embed_dim=512),
        neuroclip=NeuroCLIPPlan(image_size=(96, 96, 96), image_widths=(32, 64, 128, 256), num_epochs=100,
                                iterations_per_epoch=100, initial_lr=1e-4),
        training=TrainingPlan(num_epochs=300, iterations_per_epoch=250, initial_lr=1e-4),
        description="24-40 GB GPUs",
    ),
    "large": Preset(
        name="large", encoder_width=512, num_blocks=24, feature_dim=512, decoder_hidden=(1024, 512, 512), num_heads=8,
        text_encoder=TextEncoderPlan(width=512, layers=12, heads=8, embed_dim=1024),
        neuroclip=NeuroCLIPPlan(image_size=(96, 96, 96), image_widths=(64, 128, 256, 512), num_epochs=100,
                                iterations_per_epoch=100, initial_lr=1e-4),
        training=TrainingPlan(num_epochs=300, iterations_per_epoch=250, initial_lr=1e-4),
        description="80 GB GPUs",
    ),
    "paper": Preset(
        name="paper", encoder_width=1024, num_blocks=24, feature_dim=768, decoder_hidden=(2048, 1024, 1024), num_heads=8,
        text_encoder=TextEncoderPlan(context_length=224, width=512, layers=12, heads=8, embed_dim=1536),
        neuroclip=NeuroCLIPPlan(image_size=(96, 96, 96), image_widths=(64, 128, 256, 512), num_epochs=100,
                                iterations_per_epoch=100, initial_lr=1e-4),
        training=TrainingPlan(num_epochs=300, iterations_per_epoch=250, initial_lr=1e-4),
        slab_patch=(8, 64, 64), volume_patch=(64, 64, 64), max_batch_size=8, fixed=True,
        description="UniSyn's exact sizes (an A100 40 GB in the paper)",
    ),
}

BUDGET_PRESETS_LARGEST_FIRST = ("large", "medium", "small")


def get_preset(name: str) -> Preset:
    """A preset by name; unknown names list the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} (or 'auto')")
    return PRESETS[name]
