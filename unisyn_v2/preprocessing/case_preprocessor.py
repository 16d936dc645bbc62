"""The case preprocessor shared by training and prediction, and the inverse that restores a prediction.

Order: head foreground -> crop all images to one box -> normalise each image (its family's invertible
scheme, parameters recorded) -> resample to the target spacing. Every step is recorded in the
properties so :func:`restore_prediction` can map a synthesised volume back to the input's exact grid
and to meaningful units (HU for CT, SUV/SUVR for PET, normalised units for MRI).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from unisyn_v2.dataset.image_io import Geometry
from unisyn_v2.contracts.plans import Plans
from unisyn_v2.metadata.classes import metadata_class_key
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.preprocessing.cropping import bbox_from_list, bbox_to_list, crop_to_bbox, foreground_bbox, uncrop
from unisyn_v2.preprocessing.foreground import case_foreground
from unisyn_v2.preprocessing.normalization import (
    IntensityNormalizer, NormalizationError, NormalizationParameters, build_normalizer,
)
from unisyn_v2.preprocessing.resampling import compute_new_shape, resample_image, resample_mask, resample_to_shape

logger = logging.getLogger(__name__)


def normalizer_for(plans: Plans, modality: str) -> IntensityNormalizer:
    """The plans' normaliser of a modality; a modality the plans never saw is an error."""
    if modality not in plans.normalization:
        raise ValueError(
            f"plans {plans.plans_name} have no normalisation for modality {modality!r}; "
            f"planned modalities: {', '.join(plans.normalization)}"
        )
    plan = plans.normalization[modality]
    return build_normalizer(plan.scheme, dict(plan.kwargs))


def with_header_voxel_size(description: ImageDescription, geometry: Geometry) -> ImageDescription:
    """Fill a missing voxel size from the image header (x, y, z in mm)."""
    if description.metadata.voxel_size is not None:
        return description
    voxel = tuple(round(v, 3) for v in geometry.spacing_xyz)
    return replace(description, metadata=replace(description.metadata, voxel_size=voxel))


class PreprocessedArrays(NamedTuple):
    """What :func:`preprocess_case` returns: the target-spacing arrays and the properties that undo them."""

    data: np.ndarray  # float32 (C, Z, Y, X)
    mask: np.ndarray  # uint8 (Z, Y, X) brain mask
    properties: dict[str, Any]
    head: np.ndarray  # uint8 (Z, Y, X) head foreground (hole-filled): the loss and scoring region of CT
    lesion: np.ndarray | None = None  # uint8 (Z, Y, X) lesion labels, when a lesion mask was given


def preprocess_case(
    images: Sequence[np.ndarray],
    descriptions: Sequence[ImageDescription],
    geometry: Geometry,
    plans: Plans,
    brain_mask: np.ndarray | None = None,
    case_id: str = "case",
    files: Sequence[str] | None = None,
    lesion_mask: np.ndarray | None = None,
    foreground: np.ndarray | None = None,
) -> PreprocessedArrays:
    """Crop, normalise and resample one case (see :class:`PreprocessedArrays`); ``lesion_mask`` (integer labels
    0..255 on the images' grid, 0 = no lesion) is cropped and resampled like the brain mask, labels kept;
    ``foreground``: the images' head foreground (:func:`case_foreground`) when the caller has it already."""
    modalities = [d.modality for d in descriptions]
    head = case_foreground(images, modalities) if foreground is None else np.asarray(foreground, dtype=bool)
    mask = brain_mask.astype(bool) if brain_mask is not None else head
    bbox = foreground_bbox([head | mask])
    cropped_mask = crop_to_bbox(mask, bbox)
    cropped_head = crop_to_bbox(head | mask, bbox)
    channels: list[np.ndarray] = []
    channel_properties: list[dict[str, Any]] = []
    for index, (image, description) in enumerate(zip(images, descriptions)):
        description = with_header_voxel_size(description, geometry)
        normalizer = normalizer_for(plans, description.modality)
        cropped = crop_to_bbox(image, bbox)
        try:
            params = normalizer.fit(cropped, cropped_mask if cropped_mask.any() else None, unit=description.metadata.unit)
        except NormalizationError as error:  # name the case and file: a dataset may hold thousands
            file = f", file {files[index]}" if files else ""
            raise NormalizationError(f"case {case_id}{file} ({description.modality}): {error}") from None
        channels.append(normalizer.forward(cropped, params))
        channel_properties.append(
            {
                "modality": description.modality,
                "metadata": description.metadata.to_dict(),
                "prompt": description.prompt(),
                "class_key": metadata_class_key(description),
                "normalization": params.to_dict(),
                "unit": normalizer.output_unit(params),
                "file": files[index] if files else None,
            }
        )
    stacked = np.stack(channels)
    spacing = geometry.spacing_zyx
    target = plans.target_spacing_zyx
    new_shape = compute_new_shape(stacked.shape[1:], spacing, target)
    order = int(plans.resampling.get("image_order", 1))
    threshold = float(plans.resampling.get("anisotropy_threshold", 3.0))
    data = resample_image(stacked, spacing, new_shape=new_shape, order=order, anisotropy_threshold=threshold)
    resampled_mask = resample_mask(cropped_mask.astype(np.uint8), new_shape)
    resampled_head = resample_mask(cropped_head.astype(np.uint8), new_shape)
    resampled_lesion = None
    if lesion_mask is not None:
        if tuple(lesion_mask.shape) != tuple(mask.shape):
            raise ValueError(f"case {case_id}: lesion mask shape {tuple(lesion_mask.shape)} differs from the images' "
                             f"{tuple(mask.shape)}")
        resampled_lesion = resample_mask(crop_to_bbox(np.asarray(lesion_mask), bbox).astype(np.int64), new_shape)
    properties = {
        "case_id": case_id,
        "subject": descriptions[0].subject.to_dict() if descriptions else {},
        "channels": channel_properties,
        "original_geometry": geometry.to_dict(),
        "bbox_zyx": bbox_to_list(bbox),
        "shape_after_crop_zyx": list(cropped_mask.shape),
        "spacing_after_crop_zyx": list(spacing),
        "shape_after_resampling_zyx": list(data.shape[1:]),
        "target_spacing_zyx": list(target),
    }
    if resampled_lesion is not None:  # lets the sampler tell lesion cases without opening their arrays
        properties["lesion_voxels"] = int(np.count_nonzero(resampled_lesion))
    return PreprocessedArrays(data.astype(np.float32, copy=False), resampled_mask, properties, resampled_head,
                              resampled_lesion)


def target_normalization(plans: Plans, modality: str) -> tuple[IntensityNormalizer, NormalizationParameters]:
    """Normaliser and parameters that turn a synthesised ``modality`` back into its documented unit."""
    normalizer = normalizer_for(plans, modality)
    params = normalizer.default_target_parameters()
    if params is None:
        raise ValueError(f"normalisation of {modality} has no fixed target parameters; cannot restore units")
    return normalizer, params


def restore_prediction(prediction: np.ndarray, properties: dict[str, Any], plans: Plans, modality: str,
                       head_mask: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Map a normalised prediction on the preprocessed grid back to the original grid and units.

    Returns (array in the original (z, y, x) shape, unit). Values are limited to what the modality allows
    (CT >= -1024 HU, MRI and PET >= 0). Outside the crop box, and outside ``head_mask`` (original grid; the
    source's head, :func:`~unisyn_v2.preprocessing.foreground.case_foreground`) when given, the target's
    background value is written (air, -1000 HU, for CT; 0 for MRI and PET).
    """
    normalizer, params = target_normalization(plans, modality)
    crop_shape = tuple(int(v) for v in properties["shape_after_crop_zyx"])
    order = int(plans.resampling.get("image_order", 1))
    back = resample_to_shape(np.asarray(prediction, dtype=np.float32), crop_shape, order=order,
                             spacing_zyx=properties["target_spacing_zyx"])
    restored = normalizer.limit_to_physical(normalizer.inverse(back, params))
    geometry = Geometry.from_dict(properties["original_geometry"])
    full = uncrop(restored, bbox_from_list(properties["bbox_zyx"]), geometry.shape_zyx, fill_value=normalizer.background_value)
    if head_mask is not None:
        if tuple(head_mask.shape) != tuple(full.shape):
            raise ValueError(f"head mask shape {tuple(head_mask.shape)} differs from the output grid {tuple(full.shape)}")
        full[~np.asarray(head_mask, dtype=bool)] = normalizer.background_value
    return full.astype(np.float32, copy=False), normalizer.output_unit(params)
