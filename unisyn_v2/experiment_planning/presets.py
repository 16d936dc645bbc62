"""Network and schedule presets: ``paper`` (UniSyn's exact sizes) and budget presets for small GPUs and CPU.

Budget presets scale width, depth and patch down; the planner then fits patch and batch to the memory
at hand. ``paper`` is fixed: it reproduces the paper's sizes (24 residual blocks of 1024 channels,
768-d features, decoder 2048/1024/1024, 8x64x64 slabs, batch 8) whatever the budget, and records
the estimated memory so a user sees whether it fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unisyn_v2.experiment_planning.plans import NeuroCLIPPlan, TextEncoderPlan, TrainingPlan


@dataclass(frozen=True)
class Preset:
    """Sizes a planner starts from."""

    name: str
    encoder_width: int
    num_blocks: int
    feature_dim: int
    decoder_hidden: tuple[int, ...]
    num_heads: int
    text_encoder: TextEncoderPlan
    neuroclip: NeuroCLIPPlan
    training: TrainingPlan
    slab_patch: tuple[int, int, int] = (8, 64, 64)
    volume_patch: tuple[int, int, int] = (64, 64, 64)
    max_batch_size: int = 64
    fixed: bool = False
    unet_base_features: int = 32
    unet_max_features: int = 320
    min_inplane_patch: int = 16
    encoder_dilations: tuple[int, ...] | None = None  # one per residual block; None: undilated, as the paper
    encoder_input_skip: bool = False  # the encoder's projection also sees the input; False: as the paper
    affine_hidden: int = 0  # hidden width of the GFM's prompt -> (alpha, beta) adapter; 0: linear, as the paper
    description: str = field(default="", compare=False)


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        "cpu", 32, 4, 64, (128, 64, 64), 4,
        TextEncoderPlan(context_length=224, width=64, layers=2, heads=4, embed_dim=64),
        NeuroCLIPPlan(image_size=(32, 32, 32), downsample=2, image_widths=(16, 32, 64), num_epochs=30,
                      iterations_per_epoch=20, initial_lr=1e-3, max_batch_classes=32),
        # A short CPU schedule: the paper's lr of 1e-4 needs hundreds of epochs; 1e-3 converges in minutes.
        # 3750 iterations: on the paired demo phantom (all 20 directions, with the input skip below) 2500
        # beat both baselines on 18 directions at 16.4 dB mean validation PSNR, 3750 on 19 at 16.9 dB
        # (BENCHMARKS.md, "The encoder input skip").
        # 3D on a CPU is about 10 s a step (BENCHMARKS.md): use 2.5d there.
        TrainingPlan(num_epochs=150, iterations_per_epoch=25, validation_iterations=4, initial_lr=1e-3),
        # 4-slice slabs and 64 features (16 per output slice): on the paired demo phantom (20 directions,
        # 1500 iterations) 8 slices with 32 features left the slices blurred into each other and beat
        # histogram matching on 15 of 20 tasks, this on 16 (BENCHMARKS.md, "CPU preset").
        # Dilations 1, 2, 4, 8 widen the 4 blocks' field of view from 19 to 63 voxels at the same cost (the
        # paper's 24 blocks see 99): mean validation PSNR +0.5 dB over the 20 directions, and the oldest
        # subject's large ventricles are no longer synthesised as air from FLAIR (BENCHMARKS.md).
        encoder_dilations=(1, 2, 4, 8),
        # The input skip (the encoder's 1x1 projection also sees the raw slices) lets a 32-wide trunk keep
        # voxel-level grey/white contrast: +0.4 dB mean over the 20 directions at 100 epochs, +0.7 dB at 150.
        encoder_input_skip=True,
        slab_patch=(4, 48, 48), volume_patch=(32, 32, 32), max_batch_size=4,
        unet_base_features=8, unet_max_features=64,
        description="tiny networks that train in minutes on 2 CPU cores",
    ),
    "small": Preset(
        "small", 128, 12, 128, (256, 128, 128), 4,
        TextEncoderPlan(width=256, layers=4, heads=4, embed_dim=256),
        NeuroCLIPPlan(image_size=(64, 64, 64), image_widths=(32, 64, 128, 256), num_epochs=100, iterations_per_epoch=50, initial_lr=3e-4),
        TrainingPlan(num_epochs=150, iterations_per_epoch=250, initial_lr=2e-4),
        description="8-16 GB GPUs",
    ),
    "medium": Preset(
        "medium", 256, 24, 256, (512, 256, 256), 8,
        TextEncoderPlan(width=512, layers=8, heads=8, embed_dim=512),
        NeuroCLIPPlan(image_size=(96, 96, 96), image_widths=(32, 64, 128, 256), num_epochs=100, iterations_per_epoch=100, initial_lr=1e-4),
        TrainingPlan(num_epochs=300, iterations_per_epoch=250, initial_lr=1e-4),
        description="24-40 GB GPUs",
    ),
    "large": Preset(
        "large", 512, 24, 512, (1024, 512, 512), 8,
        TextEncoderPlan(width=512, layers=12, heads=8, embed_dim=1024),
        NeuroCLIPPlan(image_size=(96, 96, 96), image_widths=(64, 128, 256, 512), num_epochs=100, iterations_per_epoch=100, initial_lr=1e-4),
        TrainingPlan(num_epochs=300, iterations_per_epoch=250, initial_lr=1e-4),
        description="80 GB GPUs",
    ),
    "paper": Preset(
        "paper", 1024, 24, 768, (2048, 1024, 1024), 8,
        TextEncoderPlan(context_length=224, width=512, layers=12, heads=8, embed_dim=1536),
        NeuroCLIPPlan(image_size=(96, 96, 96), image_widths=(64, 128, 256, 512), num_epochs=100, iterations_per_epoch=100, initial_lr=1e-4),
        TrainingPlan(num_epochs=300, iterations_per_epoch=250, initial_lr=1e-4),
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
