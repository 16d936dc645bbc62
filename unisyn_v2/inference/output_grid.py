"""Predictions on a new voxel grid (``unisyn_predict --output_spacing SX SY SZ``).

The output grid keeps the input's origin (first voxel centre) and direction and covers its physical extent:
``size = round(n * spacing / output_spacing)`` per axis, so ``size * output_spacing`` is the input's
``n * spacing`` up to rounding (the common convention of resampling tools).

Models with an implicit decoder (``network_kwargs.decoder: liif``, :mod:`unisyn_v2.networks.liif`) synthesise
on it directly: the source is preprocessed at its own resolution (each axis at the coarser of its spacing and
the plans', never up-sampled), the encoder runs tile by tile over that grid, and every output voxel whose
centre falls inside a tile is queried there, a chunk of points at a time, with the tile's Gaussian weight at
its position; the tiles' answers are blended as the sliding window blends voxels. Memory holds one tile's
features, one chunk of queries and the output. Other models predict on their native grid and that
prediction is resampled (third-order B-spline) onto the output grid; the sidecar's ``output_grid.method``
says which happened.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from unisyn_v2.dataset.image_io import Geometry
from unisyn_v2.inference.export import build_sidecar, output_paths, write_prediction_files
from unisyn_v2.inference.inputs import InputError
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.models.sliding_window import compute_tile_starts
from unisyn_v2.networks.liif import decoder_features, liif_decoder_of
from unisyn_v2.preprocessing.case_preprocessor import (
    normalizer_for, preprocess_case, restore_prediction, target_normalization,
)
from unisyn_v2.preprocessing.foreground import case_foreground
from unisyn_v2.preprocessing.normalization import NormalizationParameters

logger = logging.getLogger(__name__)

METHOD_LIIF = "liif"
METHOD_RESAMPLED = "bspline_resampled_native_prediction"
GAUSSIAN_SIGMA_SCALE = 1.0 / 8
GAUSSIAN_FLOOR = 1e-4


def output_geometry(geometry: Geometry, spacing_xyz: Sequence[float]) -> Geometry:
    """The input's origin and direction, ``spacing_xyz``, and ``round(n * spacing / new spacing)`` voxels per axis."""
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"--output_spacing needs three positive spacings in mm (x y z), got {list(spacing_xyz)}")
    size_xyz = [max(1, int(round(n * s / t))) for n, s, t in zip(reversed(geometry.shape_zyx), geometry.spacing_xyz, spacing)]
    return replace(geometry, shape_zyx=tuple(reversed(size_xyz)), spacing_xyz=spacing)


def input_positions(geometry: Geometry, out: Geometry) -> list[np.ndarray]:
    """Per axis (z, y, x): the continuous input voxel index of every output voxel centre (same origin and direction)."""
    return [np.arange(n, dtype=np.float64) * t / s for n, t, s in zip(out.shape_zyx, out.spacing_zyx, geometry.spacing_zyx)]


def source_plans(plans: Any, geometry: Geometry) -> Any:
    """The plans with the target spacing per axis the coarser of the plans' and the source's: a thick-slice
    source keeps its slices (the implicit decoder interpolates between them, not the preprocessing)."""
    spacing = tuple(max(float(p), float(s)) for p, s in zip(plans.target_spacing_zyx, geometry.spacing_zyx))
    return replace(plans, target_spacing_zyx=spacing)


def _gaussian_1d(positions: np.ndarray, start: int, tile: int) -> np.ndarray:
    centre = start + (tile - 1) / 2.0
    return np.exp(-0.5 * ((positions - centre) / max(tile * GAUSSIAN_SIGMA_SCALE, 1e-6)) ** 2)


def liif_tiled_prediction(data: np.ndarray, networks: Sequence[torch.nn.Module], source_text: torch.Tensor | None,
                          target_text: torch.Tensor | None, positions: Sequence[np.ndarray], cell_voxels: Sequence[float],
                          tile_size: Sequence[int], step_size: float = 0.5, pad_value: float = 0.0,
                          device: torch.device | str = "cpu", query_chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend implicit-decoder answers at output points over a sliding window on the source grid.

    ``data`` (1, Z, Y, X) is the preprocessed source; ``positions`` per axis the output points' continuous
    indices in it (points outside [-0.5, n - 0.5] are not queried); ``cell_voxels`` the output voxel in source
    voxels. Returns (values (Zo, Yo, Xo) float32 averaged over ``networks``, covered mask)."""
    device = torch.device(device)
    tile = [int(t) for t in tile_size]
    shape = list(data.shape[1:])
    pads = [max(t - n, 0) for n, t in zip(shape, tile)]
    before = [p // 2 for p in pads]
    image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    image = torch.nn.functional.pad(image, [v for b, p in zip(reversed(before), reversed(pads)) for v in (b, p - b)],
                                    value=pad_value)
    padded = list(image.shape[1:])
    pos = [np.asarray(p, dtype=np.float64) + b for p, b in zip(positions, before)]
    valid = [(p >= b - 0.5) & (p <= b + n - 0.5) for p, b, n in zip(pos, before, shape)]
    out_shape = tuple(len(p) for p in pos)
    total = np.zeros(out_shape, dtype=np.float32)
    starts = compute_tile_starts(padded, tile, step_size)
    for network in networks:
        decoder = liif_decoder_of(network)
        if decoder is None:
            raise ValueError("liif_tiled_prediction needs networks with an implicit (LIIF) decoder")
        acc = np.zeros(out_shape, dtype=np.float32)
        weight_sum = np.zeros(out_shape, dtype=np.float32)
        for z0 in starts[0]:
            for y0 in starts[1]:
                for x0 in starts[2]:
                    start = (z0, y0, x0)
                    ranges = []
                    for a in range(3):  # output indices whose centre lies in this tile (positions are increasing)
                        inside = np.nonzero(valid[a] & (pos[a] >= start[a] - 0.5) & (pos[a] < start[a] + tile[a] - 0.5))[0]
                        ranges.append(inside)
                    if any(len(r) == 0 for r in ranges):
                        continue
                    patch = image[:, z0:z0 + tile[0], y0:y0 + tile[1], x0:x0 + tile[2]][None].to(device)
                    with torch.inference_mode():
                        features = decoder_features(network, patch, source_text, target_text)
                        local = [torch.from_numpy(-1.0 + (2.0 * (pos[a][ranges[a]] - start[a]) + 1.0) / tile[a]).float()
                                 for a in range(3)]
                        mesh = torch.meshgrid(*local, indexing="ij")
                        coords = torch.stack([m.reshape(-1) for m in mesh], -1)[None].to(device)
                        cell = torch.tensor([2.0 * c / t for c, t in zip(cell_voxels, tile)], device=device)[None]
                        values = decoder.query(features, coords, cell, chunk=query_chunk)[0, :, 0]
                    values = values.float().cpu().numpy().reshape(tuple(len(r) for r in ranges))
                    weights = [np.maximum(_gaussian_1d(pos[a][ranges[a]], start[a], tile[a]), 0.0) for a in range(3)]
                    w = np.maximum(weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :],
                                   GAUSSIAN_FLOOR).astype(np.float32)
                    box = np.ix_(*ranges)
                    acc[box] += w * values
                    weight_sum[box] += w
        covered = weight_sum > 0
        total += np.where(covered, acc / np.where(covered, weight_sum, 1.0), 0.0).astype(np.float32)
    return total / len(networks), covered


def _nearest_on_output(volume: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """A (Z, Y, X) input-grid array sampled at the nearest input voxel of every output voxel."""
    index = [np.clip(np.round(p).astype(np.int64), 0, n - 1) for p, n in zip(positions, volume.shape)]
    return volume[np.ix_(*index)]


def bspline_resample(array: np.ndarray, geometry: Geometry, out: Geometry, default: float) -> np.ndarray:
    """Third-order B-spline resampling of an input-grid array onto the output grid (SimpleITK)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(geometry.spacing_xyz)
    image.SetOrigin(geometry.origin_xyz)
    image.SetDirection(geometry.direction)
    reference = sitk.Image(*reversed(out.shape_zyx), sitk.sitkFloat32)
    reference.SetSpacing(out.spacing_xyz)
    reference.SetOrigin(out.origin_xyz)
    reference.SetDirection(out.direction)
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkBSpline, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def predict_on_output_grid(predictor: Any, image: np.ndarray, geometry: Geometry, source: ImageDescription,
                           target: ImageDescription, brain_mask: np.ndarray | None, out: Geometry, case_id: str = "case",
                           files: Sequence[str] | None = None) -> tuple[np.ndarray, str, dict[str, Any]]:
    """(array in output units on ``out``, unit, the sidecar's ``output_grid`` record) for one source image."""
    modality = target.modality
    positions = input_positions(geometry, out)
    head = None
    if predictor.settings.background_outside_head:
        head = case_foreground([image], [source.modality]) | (brain_mask if brain_mask is not None else False)
    record: dict[str, Any] = {"spacing_xyz": list(out.spacing_xyz), "shape_zyx": list(out.shape_zyx),
                              "origin_xyz": list(out.origin_xyz), "input_spacing_xyz": list(geometry.spacing_xyz)}
    decoders = [liif_decoder_of(n) for n in predictor.networks]
    if all(d is not None for d in decoders):
        plans = source_plans(predictor.plans, geometry)
        arrays = preprocess_case([image], [source], geometry, plans, brain_mask, case_id, files)
        params = NormalizationParameters.from_dict(arrays.properties["channels"][0]["normalization"])
        normalizer = normalizer_for(predictor.plans, source.modality)
        pad = float(normalizer.forward(np.array([normalizer.background_value], np.float32), params)[0])
        src = tgt = None
        if predictor.conditioner is not None:
            with torch.inference_mode():
                src = predictor.conditioner.embed([source]).to(predictor.device, torch.float32)
                tgt = predictor.conditioner.embed([target]).to(predictor.device, torch.float32)
        props = arrays.properties
        bbox = props["bbox_zyx"]
        crop, pre = props["shape_after_crop_zyx"], props["shape_after_resampling_zyx"]
        pre_positions = [(p - b[0] + 0.5) * (m / c) - 0.5 for p, b, c, m in zip(positions, bbox, crop, pre)]
        pre_spacing = [c * s / m for c, s, m in zip(crop, geometry.spacing_zyx, pre)]
        cell = [t / s for t, s in zip(out.spacing_zyx, pre_spacing)]
        settings = predictor.settings
        values, covered = liif_tiled_prediction(arrays.data, predictor.networks, src, tgt, pre_positions, cell,
                                                predictor.configuration.patch_size, settings.step_size, pad,
                                                predictor.device)
        target_normalizer, target_params = target_normalization(predictor.plans, modality)
        restored = target_normalizer.limit_to_physical(target_normalizer.inverse(values, target_params))
        restored[~covered] = target_normalizer.background_value
        unit = target_normalizer.output_unit(target_params)
        if head is not None:
            restored[~_nearest_on_output(head, positions)] = target_normalizer.background_value
        record.update(method=METHOD_LIIF, encoder_spacing_zyx=[round(s, 4) for s in pre_spacing],
                      note="implicit decoder queried at every output voxel centre, tiles blended with Gaussian weights")
        if settings.use_mirroring:
            record["note"] += "; mirroring TTA is not applied on a new grid"
        return restored.astype(np.float32), unit, record
    if any(d is not None for d in decoders):
        raise ValueError("the ensemble mixes implicit and convolutional decoders; predict with one kind of fold")
    logger.warning("case %s: the model has no implicit decoder (plans decoder 'conv'): its native-grid prediction is "
                   "resampled to %s mm with a B-spline (the sidecar says so)", case_id, list(out.spacing_xyz))
    prediction, properties = predictor.predict_image(image, geometry, source, target, brain_mask, case_id, files)
    native, unit = restore_prediction(prediction, properties, predictor.plans, modality, head)
    normalizer, _ = target_normalization(predictor.plans, modality)
    resampled = normalizer.limit_to_physical(bspline_resample(native, geometry, out, normalizer.background_value))
    if head is not None:
        resampled[~_nearest_on_output(head, positions)] = normalizer.background_value
    record.update(method=METHOD_RESAMPLED,
                  note="the model has no implicit decoder: native-grid prediction resampled with a 3rd-order B-spline")
    return resampled.astype(np.float32), unit, record


def predict_case_on_grid(predictor: Any, case_id: str, chosen: Any, image: np.ndarray, geometry: Geometry,
                         source: ImageDescription, target: ImageDescription, brain_mask: np.ndarray | None,
                         output_folder: Path, target_voxel_size_given: bool = False) -> Path:
    """Predict one case on the ``--output_spacing`` grid and write image + sidecar (which records the grid).

    The target prompt's voxel size is the output spacing unless the target named one."""
    if predictor.settings.export_qmaps:
        raise InputError("--export_qmaps and --output_spacing exclude each other: quantitative maps are written on the "
                         "source grid; run them separately")
    out = output_geometry(geometry, predictor.settings.output_spacing)
    if not target_voxel_size_given:
        target = replace(target, metadata=replace(target.metadata, voxel_size=tuple(out.spacing_xyz)))
    predictor.check_prompts(case_id, source, target)
    array, unit, record = predict_on_output_grid(predictor, image, geometry, source, target, brain_mask, out, case_id,
                                                 [str(chosen.path)])
    image_path, _ = output_paths(Path(output_folder), case_id, target.modality)
    sidecar = build_sidecar(case_id, target, [(chosen.path, source)], predictor.model_description,
                            predictor.settings_description(), predictor.prompt_style)
    sidecar["output_grid"] = record
    return write_prediction_files(array, unit, out, image_path, sidecar)[0]
