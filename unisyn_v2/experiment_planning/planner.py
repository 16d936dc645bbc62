"""Experiment planning: target spacing, configurations, and patch/batch/network sizes from GPU memory.

Pure functions of the fingerprint (plus the memory budget), so each decision is unit-tested. The memory
of the real network the trainer will build is estimated on the meta device
(:mod:`unisyn_v2.experiment_planning.memory`), including the two forward passes per cyclic iteration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from unisyn_v2.experiment_planning.memory import PRECISIONS, estimate_training_memory_bytes
from unisyn_v2.contracts.plans import ConfigurationPlan, NormalizationPlan, Plans
from unisyn_v2.experiment_planning.presets import BUDGET_PRESETS_LARGEST_FIRST, Preset, get_preset
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.networks.factory import build_synthesis_network

logger = logging.getLogger(__name__)

ANISOTROPY_THRESHOLD = 3.0
CT_DEFAULT_WINDOW_HU = (0.0, 80.0)  # brain HU range when the fingerprint has no CT brain statistics
CT_MIN_WINDOW_HU = 40.0
MEMORY_SAFETY_FRACTION = 0.85  # CUDA context, cuDNN workspaces and fragmentation are not estimated
CPU_MEMORY_BUDGET_GB = 4.0
MIN_BATCH_SIZE = 2
GB = 1024**3
DEFAULT_PLANS_NAME = "unisynPlans"
PLANNER_VERSION = "1"


def determine_target_spacing(spacings_zyx: np.ndarray, shapes_zyx: np.ndarray) -> tuple[float, float, float]:
    """Median spacing, with nnU-Net's rule for anisotropic data (the coarse axis gets its 10th percentile)."""
    spacings = np.asarray(spacings_zyx, dtype=float)
    target = np.median(spacings, axis=0)
    median_shape = np.median(np.asarray(shapes_zyx, dtype=float), axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    anisotropic_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    few_slices = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[others])
    if anisotropic_spacing and few_slices:
        coarse = np.percentile(spacings[:, worst], 10)
        target[worst] = max(coarse, max(target[others]) + 1e-5)
    return tuple(round(float(v), 6) for v in target)  # type: ignore[return-value]


def ct_brain_window(fingerprint_modality: dict[str, Any]) -> dict[str, float]:
    """The CT brain window: the brain's 0.5-99.5th HU percentiles widened by a quarter of their span on
    each side (at least CT_MIN_WINDOW_HU wide), so pathology a little outside the training range still
    falls on the fine segment."""
    stats = fingerprint_modality.get("foreground_intensities") or {}
    low, high = stats.get("percentile_00_5"), stats.get("percentile_99_5")
    if low is None or high is None or not np.isfinite([low, high]).all() or not high > low:
        low, high = CT_DEFAULT_WINDOW_HU
    margin = max(0.25 * (high - low), 0.5 * (CT_MIN_WINDOW_HU - (high - low)))
    low, high = max(low - margin, -1000.0), min(high + margin, 3000.0)
    return {"window_low": round(float(low), 1), "window_high": round(float(high), 1),
            "clip_low": -1024.0, "clip_high": 3071.0}


def normalization_plan(modality: str, fingerprint_modality: dict[str, Any]) -> NormalizationPlan:
    """The intensity contract of a modality's family, with dataset constants from the fingerprint."""
    family = get_modality(modality).family
    if family is ModalityFamily.CT:
        return NormalizationPlan("ct_brain_window", ct_brain_window(fingerprint_modality))
    if family is ModalityFamily.PET:
        upper = float(fingerprint_modality["foreground_intensities"]["percentile_99_5"])
        unit = fingerprint_modality.get("typical_metadata", {}).get("unit")
        return NormalizationPlan("pet_suv", {"dataset_scale": round(max(upper, 1e-3), 4), "unit": unit})
    return NormalizationPlan("mri_percentile", {"lower_percentile": 0.5, "upper_percentile": 99.5})


def network_kwargs(preset: Preset, slab: bool, patch: Sequence[int], text_dim: int) -> dict[str, Any]:
    """Kwargs shared by the GFM, cross-attention and one-hot networks (the trainer may override text_dim)."""
    depth = int(patch[0]) if slab else 1
    return {
        "dims": 2 if slab else 3,
        "in_channels": depth,
        "out_channels": depth,
        "encoder_width": preset.encoder_width,
        "num_blocks": preset.num_blocks,
        "feature_dim": preset.feature_dim,
        "decoder_hidden": list(preset.decoder_hidden),
        "text_dim": text_dim,
        "num_heads": preset.num_heads,
        **({"encoder_dilations": list(preset.encoder_dilations)} if preset.encoder_dilations else {}),
        **({"encoder_input_skip": True} if preset.encoder_input_skip else {}),
        **({"affine_hidden": preset.affine_hidden} if preset.affine_hidden else {}),
    }


def unet_kwargs(preset: Preset, slab: bool, patch: Sequence[int]) -> dict[str, Any]:
    """A PlainConvUNet whose strides divide the patch: pool an axis while it stays >= 8 voxels."""
    axes = list(patch[1:]) if slab else list(patch)
    strides: list[list[int]] = [[1] * len(axes)]
    sizes = list(axes)
    while len(strides) < 6:
        step = [2 if s % 2 == 0 and s // 2 >= 4 else 1 for s in sizes]
        if not any(v == 2 for v in step):
            break
        strides.append(step)
        sizes = [s // v for s, v in zip(sizes, step)]
    n_stages = max(len(strides), 2)
    if len(strides) < 2:
        strides.append([1] * len(axes))
    depth = int(patch[0]) if slab else 1
    return {
        "dims": 2 if slab else 3,
        "in_channels": depth,
        "out_channels": depth,
        "n_stages": n_stages,
        "features_per_stage": [min(preset.unet_base_features * 2**s, preset.unet_max_features) for s in range(n_stages)],
        "strides": strides,
    }


PLANNED_NETWORK_KINDS = ("gfm", "crossattn")  # the text-conditioned networks trained on one plans' patch and batch


def estimate_synthesis_memory_bytes(kwargs: dict[str, Any], patch: Sequence[int], slab: bool, batch_size: int,
                                    precision: str = "fp32") -> int:
    """Training memory for one batch size of the heavier of the GFM and the cross-attention baseline (two
    forward passes per iteration) with activations at ``precision`` (fp16: CUDA autocast): both trainers
    use the plans' patch and batch, and the baseline's fusion block (a feed-forward 4x the feature width at
    every location) needs more at paper size."""
    spatial = (int(patch[0]), int(patch[1]), int(patch[2]))
    source = (1, spatial[0], spatial[1], spatial[2]) if slab else (1, 1, *spatial)
    text = (1, int(kwargs["text_dim"]))
    return max(
        estimate_training_memory_bytes(
            lambda kind=kind: build_synthesis_network(kind, kwargs), [source, text, text], batch_size, forward_passes=2,
            precision=precision,
        ).total_bytes
        for kind in PLANNED_NETWORK_KINDS
    )


def fit_patch_and_batch(preset: Preset, slab: bool, median_shape: Sequence[int], budget_bytes: float, text_dim: int,
                        precision: str = "fp32") -> tuple[tuple[int, int, int], int, int]:
    """Largest batch (>= 2) for the preset patch; shrink the patch only if batch 2 does not fit.

    The patch shrinks along the axis that is largest relative to the median image (in-plane only for
    2.5D slabs), in steps of 8 voxels. The paper preset's 2.5D setting is kept as published whatever
    the budget. Returns (patch, batch, estimated bytes).
    """
    start = preset.slab_patch if slab else preset.volume_patch
    patch = [int(start[0]) if slab else min(int(start[0]), _round8(median_shape[0])),
             min(int(start[1]), _round8(median_shape[1])), min(int(start[2]), _round8(median_shape[2]))]
    keep_published = preset.fixed and slab  # the paper fixes its 2.5D setting; a 3D variant still has to fit
    if keep_published:
        patch = list(start)
    while True:
        kwargs = network_kwargs(preset, slab, patch, text_dim)
        one = estimate_synthesis_memory_bytes(kwargs, patch, slab, 1, precision)
        two = estimate_synthesis_memory_bytes(kwargs, patch, slab, 2, precision)
        per_sample = max(two - one, 1)
        static = one - per_sample
        if keep_published:
            batch = preset.max_batch_size
            return tuple(patch), batch, static + batch * per_sample  # type: ignore[return-value]
        batch = int((budget_bytes - static) // per_sample)
        if batch >= MIN_BATCH_SIZE:
            batch = min(batch, preset.max_batch_size)
            return tuple(patch), batch, static + batch * per_sample  # type: ignore[return-value]
        shrinkable = [a for a in ((1, 2) if slab else (0, 1, 2)) if patch[a] - 8 >= preset.min_inplane_patch]
        if not shrinkable:
            logger.warning("even the smallest patch with batch %d exceeds the memory budget", MIN_BATCH_SIZE)
            return tuple(patch), MIN_BATCH_SIZE, static + MIN_BATCH_SIZE * per_sample  # type: ignore[return-value]
        axis = max(shrinkable, key=lambda a: patch[a] / max(median_shape[a], 1))
        patch[axis] -= 8


def _round8(size: float) -> int:
    return max(8, int(size) // 8 * 8)


AUTO_PRESETS_LARGEST_FIRST = ("paper", *BUDGET_PRESETS_LARGEST_FIRST)


def choose_preset(requested: str, budget_gb: float | None, median_shape: Sequence[int],
                  precision: str = "fp16") -> Preset:
    """``auto``: the CPU preset without a GPU budget, else the largest preset that fits at ``precision``:
    the paper's at its published patch and batch, a budget preset with a batch of 2."""
    if requested != "auto":
        return get_preset(requested)
    if budget_gb is None:
        return get_preset("cpu")
    for name in AUTO_PRESETS_LARGEST_FIRST:
        preset = get_preset(name)
        if preset.fixed:
            patch, batch = list(preset.slab_patch), preset.max_batch_size
        else:
            patch = [preset.slab_patch[0], min(preset.slab_patch[1], _round8(median_shape[1])),
                     min(preset.slab_patch[2], _round8(median_shape[2]))]
            batch = MIN_BATCH_SIZE
        kwargs = network_kwargs(preset, True, patch, preset.text_encoder.embed_dim)
        if estimate_synthesis_memory_bytes(kwargs, patch, True, batch, precision) <= budget_gb * MEMORY_SAFETY_FRACTION * GB:
            return preset
    return get_preset("small")


def detect_gpu_memory_gb() -> float | None:
    """Free memory of the first CUDA device in GiB, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(0)
    return free / GB


def plan_experiment(fingerprint: dict[str, Any], preset_name: str = "auto", gpu_memory_gb: float | None = None,
                    plans_name: str = DEFAULT_PLANS_NAME, target_spacing: Sequence[float] | None = None,
                    configurations: Sequence[str] = ("2.5d", "3d"), default_configuration: str = "2.5d",
                    precision: str | None = None) -> Plans:
    """Turn a fingerprint into plans (no file IO).

    ``precision``: the activation precision of the memory estimate; default fp16 (the trainer's CUDA
    autocast) with a GPU budget, fp32 (CPU training) without one. Each configuration records it.
    """
    cases = fingerprint["cases"].values()
    spacings = np.array([c["spacing_zyx"] for c in cases])
    shapes = np.array([c["shape_after_crop_zyx"] for c in cases])
    spacing = tuple(float(v) for v in target_spacing) if target_spacing else determine_target_spacing(spacings, shapes)
    scale = np.median(spacings, axis=0) / np.asarray(spacing)
    median_shape = [int(round(v)) for v in np.median(shapes, axis=0) * scale]
    precision = precision or ("fp16" if gpu_memory_gb is not None else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    preset = choose_preset(preset_name, gpu_memory_gb, median_shape, precision)
    budget_gb = gpu_memory_gb if gpu_memory_gb is not None else CPU_MEMORY_BUDGET_GB
    budget = budget_gb * MEMORY_SAFETY_FRACTION * GB
    text_dim = preset.text_encoder.embed_dim
    plan_configs: dict[str, ConfigurationPlan] = {}
    for name in configurations:
        slab = name == "2.5d"
        patch, batch, used = fit_patch_and_batch(preset, slab, median_shape, budget, text_dim, precision)
        plan_configs[name] = ConfigurationPlan(
            name=name,
            data_identifier=f"{plans_name}_data",
            patch_size=patch,
            batch_size=batch,
            spacing_zyx=spacing,  # type: ignore[arg-type]
            median_shape_zyx=tuple(median_shape),  # type: ignore[arg-type]
            network_kwargs=network_kwargs(preset, slab, patch, text_dim),
            unet_kwargs=unet_kwargs(preset, slab, patch),
            estimated_memory_gb=round(used / GB, 3),
            memory_precision=precision,
        )
        logger.info("%s: patch %s, batch %d, estimated %.2f GiB of %.1f GiB at %s", name, patch, batch, used / GB,
                    budget_gb, precision)
    if default_configuration not in plan_configs:
        default_configuration = next(iter(plan_configs))
    modalities = tuple(fingerprint["modalities"])
    return Plans(
        plans_name=plans_name,
        dataset_name=fingerprint["dataset_name"],
        planner="unisyn_v2.experiment_planning.planner:plan_experiment",
        preset=preset.name,
        modalities=modalities,
        normalization={m: normalization_plan(m, fingerprint["modalities"][m]) for m in modalities},
        target_spacing_zyx=spacing,  # type: ignore[arg-type]
        resampling={"image_order": 3, "mask_order": 0, "anisotropy_threshold": ANISOTROPY_THRESHOLD},  # cubic: nnU-Net's quality (issue 21)
        default_configuration=default_configuration,
        configurations=plan_configs,
        text_encoder=preset.text_encoder,
        neuroclip=preset.neuroclip,
        training=preset.training,
        gpu_memory_gb=gpu_memory_gb,
        typical_metadata={m: dict(fingerprint["modalities"][m].get("typical_metadata", {})) for m in modalities},
        planner_version=PLANNER_VERSION,
    )


def with_overrides(plans: Plans, **training_overrides: Any) -> Plans:
    """A copy of the plans with some training fields replaced (used by quick runs and tests)."""
    return replace(plans, training=replace(plans.training, **training_overrides))

