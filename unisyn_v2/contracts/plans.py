"""The plans file: every decision planning made, as frozen dataclasses validated on load.

A trainer and a predictor read nothing else to rebuild the data pipeline and the network; the file
is copied into every model folder. Loading checks every field and names the file and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from unisyn_v2.io_utils import read_json, write_json_atomic

PLANS_FORMAT_VERSION = 1
CONFIGURATION_NAMES = ("2.5d", "3d")
# Sanity limits of a plans file read from disk: far above anything the planner writes (a 3D patch of
# 160^3, batches of tens), far below what makes training or prediction die with a raw MemoryError.
MAX_PATCH_EDGE = 2048
MAX_PATCH_VOXELS = 512**3
MAX_BATCH_SIZE = 4096
# Loss and scoring regions: ``brain`` (the brain mask) or ``head`` (the hole-filled head foreground).
LOSS_REGIONS = ("brain", "head")
DEFAULT_LOSS_REGION = {"CT": "head", "PET": "brain", "MRI": "brain"}
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # names that become file or folder names


class PlansError(ValueError):
    """A plans file is missing a field, has a wrong type, or comes from a newer version."""


@dataclass(frozen=True)
class NormalizationPlan:
    """Normalisation scheme of one modality and the constants it needs (see preprocessing.normalization)."""

    scheme: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigurationPlan:
    """One way to cut and feed the data: ``2.5d`` (k slices as channels) or ``3d`` patches."""

    name: str
    data_identifier: str
    patch_size: tuple[int, int, int]  # (z, y, x); for 2.5d z is the slab depth k
    batch_size: int
    spacing_zyx: tuple[float, float, float]
    median_shape_zyx: tuple[int, int, int]
    network_kwargs: dict[str, Any]  # shared by GFM / cross-attention / one-hot variants
    unet_kwargs: dict[str, Any]  # the plain regression U-Net baseline
    estimated_memory_gb: float
    memory_precision: str = "fp32"  # activation precision of the estimate: fp16 (CUDA autocast) or fp32 (CPU)

    @property
    def is_slab(self) -> bool:
        """True for the 2.5D configuration."""
        return self.name == "2.5d"


NEUROCLIP_IMAGE_ENCODERS = ("cnn", "vit")
NETWORK_DECODERS = ("conv", "liif")  # network_kwargs.decoder: pointwise on the source grid, or TUMSyn's implicit one
FEATURE_LOSSES = ("scale_invariant", "paper")  # training.feature_loss (unisyn_v2.training.losses)


@dataclass(frozen=True)
class TextEncoderPlan:
    """Sizes of NeuroCLIP's text transformer (the GFM loads it frozen)."""

    context_length: int = 224
    width: int = 64
    layers: int = 2
    heads: int = 4
    embed_dim: int = 64
    value_encoding: bool = True  # numbers by value and unit (unisyn_v2.metadata.value_code), not digit strings
    value_centres: int = 32  # soft thresholds per numeric field
    value_weight: float = 0.5  # norm of each present field's value code (the text part has norm 1)


@dataclass(frozen=True)
class NeuroCLIPPlan:
    """Stage 1: whole-brain image side and schedule of the contrastive pre-training."""

    image_size: tuple[int, int, int] = (48, 48, 48)  # after downsampling by 2, cropped/padded
    downsample: int = 2
    image_widths: tuple[int, ...] = (16, 32, 64)
    num_epochs: int = 20
    iterations_per_epoch: int = 20
    initial_lr: float = 1e-3
    max_batch_classes: int = 32
    weight_decay: float = 0.1  # AdamW, on weights only (CLIP's recipe)
    warmup_fraction: float = 0.2  # linear warm-up share of training, then cosine decay
    init_temperature: float = 0.07  # CLIP's initial softmax temperature (learnt)
    image_encoder: str = "cnn"  # cnn | vit (TUMSyn's image side: a 3D ViT)


@dataclass(frozen=True)
class TrainingPlan:
    """Stage 2 schedule: the paper's Adam, lr 1e-4 halved every third of training, lambdas 0.1 / 1.0."""

    num_epochs: int = 300
    iterations_per_epoch: int = 250
    validation_iterations: int = 20
    initial_lr: float = 1e-4
    lr_halving_every_fraction: float = 1.0 / 3.0
    lambda_feature: float = 0.1
    lambda_synthesis: float = 1.0
    # "scale_invariant": per channel, L1(f0_s, f0_t) over the features' own spread, which rescaling alpha
    # cannot shrink; "paper": UniSyn's plain L1 (satisfiable by inflating every alpha, no output changes)
    feature_loss: str = "scale_invariant"
    grad_clip: float = 12.0
    foreground_fraction_min: float = 0.25  # patches with less brain than this are under-sampled
    # Where the synthesis loss counts in full, per target family (elsewhere it is weighted down): the whole
    # head for CT (the skull is what MR -> CT users need: attenuation correction, dose planning, SynthRAD),
    # the brain for MRI (its normalisation depends on brain percentiles, the scalp is partly unpredictable).
    loss_region: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LOSS_REGION))
    # Abnormal tissue fills a few % of the brain, so a uniformly placed patch rarely holds it: this fraction of
    # training patches is centred on a lesion voxel of a case with a lesion mask (nnU-Net's
    # oversample_foreground_percent); it acts only where dataset.json names lesion masks, 0 turns it off.
    lesion_oversample: float = 0.33
    # Synthesis-loss weight of lesion voxels relative to the rest of the loss region (1: no extra weight).
    lesion_weight: float = 1.0


@dataclass(frozen=True)
class Plans:
    """Everything planning decided for one dataset."""

    plans_name: str
    dataset_name: str
    planner: str
    preset: str
    modalities: tuple[str, ...]
    normalization: dict[str, NormalizationPlan]
    target_spacing_zyx: tuple[float, float, float]
    resampling: dict[str, Any]
    default_configuration: str
    configurations: dict[str, ConfigurationPlan]
    text_encoder: TextEncoderPlan
    neuroclip: NeuroCLIPPlan
    training: TrainingPlan
    gpu_memory_gb: float | None
    typical_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = PLANS_FORMAT_VERSION
    planner_version: str = "1"

    def loss_region(self, family: str) -> str:
        """``brain`` or ``head``: where the synthesis loss of a target of this family counts in full."""
        return self.training.loss_region.get(str(family), DEFAULT_LOSS_REGION.get(str(family), "brain"))

    def configuration(self, name: str | None = None) -> ConfigurationPlan:
        """A configuration by name (default: the plans' default)."""
        key = name or self.default_configuration
        if key not in self.configurations:
            raise PlansError(f"plans {self.plans_name}: no configuration {key!r}; available: {', '.join(self.configurations)}")
        return self.configurations[key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with a stable key order."""
        return _jsonify(asdict(self))

    def save(self, path: Path) -> Path:
        """Write atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Plans":
        """Read and validate a plans file."""
        return cls.from_dict(read_json(path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plans") -> "Plans":
        """Validate and build; errors name the source and the field."""
        if not isinstance(data, dict):
            raise PlansError(f"{source}: must be a JSON object")
        version = data.get("format_version", PLANS_FORMAT_VERSION)
        if not isinstance(version, int) or version > PLANS_FORMAT_VERSION:
            raise PlansError(
                f"{source}: format_version {version!r} is newer than this unisyn_v2 understands "
                f"({PLANS_FORMAT_VERSION}); upgrade unisyn_v2 or re-plan the dataset"
            )
        plans = _build(cls, data, source, nested={
            "normalization": lambda v, w: {k: _build(NormalizationPlan, x, f"{w}.{k}") for k, x in _mapping(v, w).items()},
            "configurations": lambda v, w: {k: _build(ConfigurationPlan, x, f"{w}.{k}") for k, x in _mapping(v, w).items()},
            "text_encoder": lambda v, w: _build(TextEncoderPlan, v, w),
            "neuroclip": lambda v, w: _build(NeuroCLIPPlan, v, w),
            "training": lambda v, w: _build(TrainingPlan, v, w),
        })
        if plans.default_configuration not in plans.configurations:
            raise PlansError(f"{source}.default_configuration: {plans.default_configuration!r} is not among the configurations")
        _check_values(plans, source)
        return plans


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlansError(f"{where}: must be a JSON object")
    return value


def _build(cls: type, data: Any, where: str, nested: dict[str, Any] | None = None) -> Any:
    data = _mapping(data, where)
    nested = nested or {}
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise PlansError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name not in data:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise PlansError(f"{where}.{name}: required field is missing")
            continue
        value = data[name]
        if name in nested:
            values[name] = nested[name](value, f"{where}.{name}")
        else:
            values[name] = _coerce(value, str(spec.type), f"{where}.{name}")
    return cls(**values)


def _coerce(value: Any, type_text: str, where: str) -> Any:
    if value is None:
        if "None" in type_text:
            return None
        raise PlansError(f"{where}: must not be null")
    if type_text.startswith("tuple"):
        if not isinstance(value, list):
            raise PlansError(f"{where}: must be a list (got {value!r})")
        length = None if "..." in type_text else type_text.count(",") + 1
        if length is not None and len(value) != length:
            raise PlansError(f"{where}: must have {length} entries (got {len(value)}: {value!r})")
        kind = "int" if "int" in type_text else "float" if "float" in type_text else "str"
        return tuple(_coerce(v, kind, f"{where}[{i}]") for i, v in enumerate(value))
    if type_text.startswith("int"):
        if isinstance(value, float) and value.is_integer():  # 16.0 written by another tool
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlansError(f"{where}: must be an integer (got {value!r})")
        return value
    if type_text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PlansError(f"{where}: must be a number (got {value!r})")
        if not math.isfinite(value):
            raise PlansError(f"{where}: must be a finite number (got {value!r})")
        return float(value)
    if type_text.startswith("bool") and not isinstance(value, bool):
        raise PlansError(f"{where}: must be true or false (got {value!r})")
    if type_text.startswith("str"):
        if not isinstance(value, str):
            raise PlansError(f"{where}: must be a string (got {value!r})")
        return value
    if type_text.startswith("dict") and not isinstance(value, dict):
        raise PlansError(f"{where}: must be a JSON object (got {value!r})")
    return value


def _check_values(plans: Plans, source: str) -> None:
    """Ranges of the numbers and names: an absurd plans file is refused here, naming the file and field,
    instead of failing later with a MemoryError or writing outside its folder."""
    def fail(where: str, message: str) -> None:
        raise PlansError(f"{source}.{where}: {message}; fix the file or re-plan the dataset (unisyn_plan_and_preprocess)")

    def at_least(where: str, value: float, low: float, high: float | None = None) -> None:
        if value < low or (high is not None and value > high):
            fail(where, f"{value!r} is out of range (must be {'>= ' + str(low) if high is None else f'in [{low}, {high}]'})")

    def positive(where: str, value: float) -> None:
        if not value > 0:
            fail(where, f"must be positive (got {value!r})")

    def patch(where: str, size: tuple[int, ...]) -> None:
        voxels = math.prod(size)
        if min(size) < 1 or max(size) > MAX_PATCH_EDGE or voxels > MAX_PATCH_VOXELS:
            fail(where, f"{list(size)} is not a usable patch size ({voxels:.3g} voxels; each edge must be 1-"
                        f"{MAX_PATCH_EDGE} and a patch at most {MAX_PATCH_VOXELS:.3g} voxels)")

    for name in ("plans_name", "dataset_name"):
        if not PLAIN_NAME.fullmatch(getattr(plans, name)):
            fail(name, f"{getattr(plans, name)!r} must be a plain name (letters, digits, _ . + -): it names files and folders")
    for index, value in enumerate(plans.target_spacing_zyx):
        positive(f"target_spacing_zyx[{index}]", value)
    if plans.gpu_memory_gb is not None:
        positive("gpu_memory_gb", plans.gpu_memory_gb)
    for modality, plan in plans.normalization.items():
        _check_finite(plan.kwargs, f"normalization.{modality}.kwargs", fail)
    for key, config in plans.configurations.items():
        where = f"configurations.{key}"
        if config.name != key:
            fail(f"{where}.name", f"{config.name!r} differs from its key {key!r}")
        if not PLAIN_NAME.fullmatch(config.data_identifier):
            fail(f"{where}.data_identifier", f"{config.data_identifier!r} must be a plain folder name (letters, digits, "
                                             "_ . + -), it is a folder inside the preprocessed dataset")
        patch(f"{where}.patch_size", config.patch_size)
        at_least(f"{where}.batch_size", config.batch_size, 1, MAX_BATCH_SIZE)
        for index, value in enumerate(config.spacing_zyx):
            positive(f"{where}.spacing_zyx[{index}]", value)
        for index, value in enumerate(config.median_shape_zyx):
            at_least(f"{where}.median_shape_zyx[{index}]", value, 1)
        at_least(f"{where}.estimated_memory_gb", config.estimated_memory_gb, 0)
        decoder = config.network_kwargs.get("decoder", "conv")
        if decoder not in NETWORK_DECODERS:
            fail(f"{where}.network_kwargs.decoder", f"{decoder!r} is not one of {', '.join(NETWORK_DECODERS)}")
        if decoder == "liif" and config.is_slab:
            fail(f"{where}.network_kwargs.decoder", "'liif' needs a 3D configuration (a 2.5D slab has no z axis "
                                                    "to query between slices); use it in the 3d configuration")
    for name in ("context_length", "width", "layers", "heads", "embed_dim"):
        at_least(f"text_encoder.{name}", getattr(plans.text_encoder, name), 1, 1_000_000)
    clip = plans.neuroclip
    patch("neuroclip.image_size", clip.image_size)
    at_least("neuroclip.downsample", clip.downsample, 1, 64)
    for index, width in enumerate(clip.image_widths):
        at_least(f"neuroclip.image_widths[{index}]", width, 1, 1_000_000)
    at_least("neuroclip.num_epochs", clip.num_epochs, 0)
    at_least("neuroclip.iterations_per_epoch", clip.iterations_per_epoch, 1)
    positive("neuroclip.initial_lr", clip.initial_lr)
    at_least("neuroclip.max_batch_classes", clip.max_batch_classes, 1)
    at_least("neuroclip.weight_decay", clip.weight_decay, 0)
    at_least("neuroclip.warmup_fraction", clip.warmup_fraction, 0, 1)
    positive("neuroclip.init_temperature", clip.init_temperature)
    if clip.image_encoder not in NEUROCLIP_IMAGE_ENCODERS:
        fail("neuroclip.image_encoder", f"{clip.image_encoder!r} is not one of {', '.join(NEUROCLIP_IMAGE_ENCODERS)}")
    training = plans.training
    at_least("training.num_epochs", training.num_epochs, 0)
    at_least("training.iterations_per_epoch", training.iterations_per_epoch, 1)
    at_least("training.validation_iterations", training.validation_iterations, 0)
    positive("training.initial_lr", training.initial_lr)
    positive("training.lr_halving_every_fraction", training.lr_halving_every_fraction)
    at_least("training.lambda_feature", training.lambda_feature, 0)
    at_least("training.lambda_synthesis", training.lambda_synthesis, 0)
    if training.feature_loss not in FEATURE_LOSSES:
        fail("training.feature_loss", f"{training.feature_loss!r} is not one of {', '.join(FEATURE_LOSSES)}")
    at_least("text_encoder.value_centres", plans.text_encoder.value_centres, 1, 256)
    positive("text_encoder.value_weight", plans.text_encoder.value_weight)
    positive("training.grad_clip", training.grad_clip)
    for family, region in training.loss_region.items():
        if family not in DEFAULT_LOSS_REGION:
            fail(f"training.loss_region.{family}", f"unknown modality family (use {', '.join(DEFAULT_LOSS_REGION)})")
        if region not in LOSS_REGIONS:
            fail(f"training.loss_region.{family}", f"{region!r} is not one of {', '.join(LOSS_REGIONS)}")
    at_least("training.foreground_fraction_min", training.foreground_fraction_min, 0, 1)
    at_least("training.lesion_oversample", training.lesion_oversample, 0, 1)
    at_least("training.lesion_weight", training.lesion_weight, 0, 1000)


def _check_finite(value: Any, where: str, fail: Any) -> None:
    """Every number inside a JSON value is finite (NaN and Infinity parse as JSON in Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        fail(where, f"must be a finite number (got {value!r})")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}", fail)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]", fail)


def _jsonify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonify(v) for v in value]
    return value
