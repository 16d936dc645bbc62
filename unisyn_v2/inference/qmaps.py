"""Prediction with the qMRI head (issue 22): the MRI contract on rendered volumes, and ``--export_qmaps``.

A :class:`~unisyn_v2.networks.qmri_head.QMRINetwork` renders an MR target as a physical signal (PD
units). :func:`~unisyn_v2.models.rendering.finish_rendered_volume` turns the whole rendered volume into the MRI contract's scale
(the plans' MRI normaliser fitted in the brain mask: p0.5 -> 0, p99.5 -> 1), as the source images were
normalised; prediction and the trainer's final validation call it after the sliding window.
:func:`write_qmaps` writes the effective PD (relative to CSF = 1), T1, T2 and T2* (ms) maps of a case
on the source's grid: ``<case>_qmap-PD.nii.gz``, ``..._qmap-T1``, ``..._qmap-T2``, ``..._qmap-T2star``
and ``<case>_qmaps.json`` (units, the field strength T1 refers to, model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unisyn_v2.dataset.image_io import Geometry, write_image
from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.models.rendering import rendering_network
from unisyn_v2.networks.qmri_head import MAP_NAMES, REFERENCE_FIELD_T, has_signal_model
from unisyn_v2.preprocessing.case_preprocessor import preprocess_case
from unisyn_v2.preprocessing.cropping import bbox_from_list, uncrop
from unisyn_v2.preprocessing.resampling import resample_to_shape

logger = logging.getLogger(__name__)

MAP_UNITS = {"PD": "relative to CSF (effective)", "T1": "ms", "T2": "ms", "T2star": "ms"}


def predict_qmaps(network: nn.Module, conditioner: Any, data: np.ndarray, source: ImageDescription,
                  target: ImageDescription, patch_size: tuple[int, ...], is_slab: bool, device: torch.device,
                  tile_batch_size: int = 4, step_size: float = 0.5) -> np.ndarray:
    """(4, Z, Y, X) PD, T1, T2, T2* of a preprocessed (1, Z, Y, X) source, by the sliding window."""
    from unisyn_v2.models.sliding_window import sliding_window_predict

    qmri = rendering_network(network)
    if qmri is None:
        raise ValueError("this model has no quantitative-map head (train the gfm_qmri trainer for --export_qmaps)")
    with torch.inference_mode():
        s = conditioner.embed([source]).to(device, torch.float32)
        t = conditioner.embed([target]).to(device, torch.float32)

    def forward(patch: torch.Tensor) -> torch.Tensor:
        n = patch.shape[0]
        maps = qmri.quantitative_maps(patch[:, 0] if is_slab else patch, s.expand(n, -1), t.expand(n, -1))
        return maps if is_slab else maps[:, :, 0]  # 2.5D: (B, 4, k, H, W); 3D: (B, 4, D, H, W)

    image = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    with torch.inference_mode():
        maps = sliding_window_predict(image, forward, patch_size, step_size=step_size, tile_batch_size=tile_batch_size,
                                      out_channels=len(MAP_NAMES), device=device)
    return maps.numpy()


def restore_map(array: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    """A map on the preprocessed grid back on the source's grid (linear resampling, 0 outside the crop)."""
    crop_shape = tuple(int(v) for v in properties["shape_after_crop_zyx"])
    back = resample_to_shape(np.asarray(array, dtype=np.float32), crop_shape, order=1,
                             spacing_zyx=properties["target_spacing_zyx"])
    geometry = Geometry.from_dict(properties["original_geometry"])
    return uncrop(back, bbox_from_list(properties["bbox_zyx"]), geometry.shape_zyx, fill_value=0.0).astype(np.float32)


def qmap_paths(output_folder: Path, case_id: str) -> dict[str, Path]:
    """Map name -> output path, plus ``"json"`` for the record."""
    paths = {name: Path(output_folder) / f"{case_id}_qmap-{name}.nii.gz" for name in MAP_NAMES}
    return {**paths, "json": Path(output_folder) / f"{case_id}_qmaps.json"}


def write_qmaps(predictor: Any, image: np.ndarray, geometry: Geometry, source: ImageDescription,
                target: ImageDescription, brain_mask: np.ndarray | None, case_id: str, output_folder: Path) -> dict[str, Path]:
    """Predict (averaged over folds) and write a case's effective PD/T1/T2/T2* maps; returns the paths."""
    arrays = preprocess_case([image], [source], geometry, predictor.plans, brain_mask, case_id)
    data, properties = arrays.data, arrays.properties
    configuration = predictor.configuration
    total = None
    for network in predictor.networks:
        maps = predict_qmaps(network, predictor.conditioner, data, source, target, tuple(configuration.patch_size),
                             configuration.is_slab, predictor.device, predictor.settings.tile_batch_size,
                             predictor.settings.step_size)
        total = maps if total is None else total + maps
    assert total is not None
    total /= len(predictor.networks)
    paths = qmap_paths(Path(output_folder), case_id)
    physics_field = target.metadata.field_strength if has_signal_model(target) else None
    field = float(physics_field) if physics_field else REFERENCE_FIELD_T
    for index, name in enumerate(MAP_NAMES):
        write_image(paths[name], restore_map(total[index], properties), geometry)
    write_json_atomic(paths["json"], {
        "case_id": case_id, "maps": {name: {"file": paths[name].name, "unit": MAP_UNITS[name]} for name in MAP_NAMES},
        "t1_field_strength_T": field, "source_prompt": source.prompt(), "model": predictor.model_description,
        "note": "effective maps learned from contrast-weighted images only: they re-render these protocols; "
                "PD has no absolute scale"})
    logger.info("case %s: wrote quantitative maps %s (T1 at %g T)", case_id, ", ".join(p.name for p in paths.values()), field)
    return paths
