"""Gaussian-weighted 3D sliding-window inference for regression (synthesis) networks.

Follows nnU-Net's tiling rule and Gaussian importance weighting, but accumulates in fp32
(the outputs are intensities, not logits, so fp16 accumulation would cost precision).
The window is always 3D over (z, y, x); a 2.5D network is wrapped by the caller's predictor
adapter. This module imports no model code.

2.5D slab models and seams: a k-slice slab model predicts each of its k output slices from a different
output channel, so the same anatomy comes out slightly differently at each slab position. With the
nnU-Net step (k/2 slices) and the Gaussian along z (sigma = k/8, so the two outer slices of a 4-slice
slab weigh 0.02), every slice is taken almost entirely from one slab at one position, and the source
slab and position alternate along z: a staircase at every slab border in coronal and sagittal views
(issue 17). With ``z_step=1`` every slice is predicted at every slab position with the same weights,
so no slice differs from its neighbour by where the slab borders fall (``unisyn_v2.evaluation.seams``
measures it); it costs about k * step_size times the tiles along z (2x for k = 4, 4x for k = 8 at step 0.5).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

Predictor = Callable[[Tensor], Tensor]
DeviceLike = Union[str, torch.device]

#: Floor of the Gaussian importance map (relative to its max of 1). The analytic Gaussian
#: underflows to 0 in the tile corners for small tiles; a zero weight would leave voxels
#: covered only by corners undefined (0/0). 1e-4 is far below any blending-relevant weight
#: (MONAI uses 1e-3) yet keeps the division well conditioned in fp32.
GAUSSIAN_FLOOR = 1e-4

#: Without a progress bar (``--disable_progress_bar``, worker processes, validation) a long pass logs
#: how far it got at most this often, so a 128^3 prediction on a CPU is not silent for minutes.
PROGRESS_LOG_INTERVAL_S = 20.0


def compute_tile_starts(image_size: Sequence[int], tile_size: Sequence[int], step_size: float,
                        z_step: Optional[int] = None) -> list[list[int]]:
    """Per-axis tile start offsets using nnU-Net's rule.

    n = ceil((size - tile) / (tile * step)) + 1 tiles per axis, spaced evenly from 0 to
    size - tile, so the first tile touches the start and the last one the end of the axis.
    ``z_step`` (voxels) replaces the rule on the first axis: starts 0, z_step, ... and size - tile
    (``z_step=1``: a window at every z, what 2.5D slab models need to leave no seams).
    """
    if z_step is not None and int(z_step) < 1:
        raise ValueError(f"z_step must be a whole number of voxels >= 1, got {z_step}")
    if len(image_size) != len(tile_size):
        raise ValueError(f"image_size {tuple(image_size)} and tile_size {tuple(tile_size)} differ in length")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    starts: list[list[int]] = []
    for size, tile in zip(image_size, tile_size):
        if tile <= 0 or size < tile:
            raise ValueError(f"need 0 < tile <= size on every axis, got size {tuple(image_size)}, tile {tuple(tile_size)}")
        n = int(math.ceil((size - tile) / (tile * step_size))) + 1
        max_start = size - tile
        if n == 1:
            starts.append([0])
            continue
        spacing = max_start / (n - 1)
        starts.append([int(round(spacing * i)) for i in range(n)])
    if z_step is not None:
        last = image_size[0] - tile_size[0]
        starts[0] = sorted(set(range(0, last + 1, int(z_step))) | {last})
    return starts


@lru_cache(maxsize=8)
def _gaussian_cached(tile: tuple[int, ...], sigma_scale: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Separable Gaussian centred at (t - 1) / 2 so that the map is exactly symmetric."""
    result: Optional[Tensor] = None
    for t in tile:
        sigma = max(t * sigma_scale, 1e-6)
        coords = torch.arange(t, dtype=torch.float64) - (t - 1) / 2.0
        g = torch.exp(-0.5 * (coords / sigma) ** 2)
        g = g / g.max()
        result = g if result is None else result[..., None] * g
    assert result is not None
    result = result / result.max()
    result = result.clamp_min(GAUSSIAN_FLOOR)
    return result.to(device=device, dtype=dtype)


def gaussian_importance_map(
    tile_size: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    dtype: torch.dtype = torch.float32,
    device: DeviceLike = "cpu",
) -> Tensor:
    """Gaussian weight map (max 1, min ``GAUSSIAN_FLOOR``) that down-weights tile borders.

    sigma = tile * sigma_scale per axis (nnU-Net: 1/8). Cached; a clone is returned so callers
    may modify it freely.
    """
    tile = tuple(int(t) for t in tile_size)
    return _gaussian_cached(tile, float(sigma_scale), torch.device(device), dtype).clone()


def z_window_layout(n_slices: int, tile_z: int, step_size: float = 0.5, z_step: Optional[int] = None,
                    use_gaussian: bool = True) -> tuple[list[int], list[float]]:
    """Window starts (in slices of the unpadded axis, so negative with ``z_step``'s margin) and blending
    weights along z as :func:`sliding_window_predict` uses them, so a seam measure can find where one
    slab hands over to the next. Needs n_slices >= tile_z."""
    margin = tile_z - 1 if z_step is not None else 0
    starts = [s - margin for s in compute_tile_starts([n_slices + 2 * margin], [tile_z], step_size, z_step)[0]]
    weights = gaussian_importance_map((tile_z,)) if use_gaussian else torch.ones(tile_z)
    return starts, [float(w) for w in weights]


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All 2^n subsets of the spatial mirror axes (as batch-tensor dims), identity first."""
    axes = sorted(set(int(a) for a in mirror_axes))
    if any(a < 0 or a > 2 for a in axes):
        raise ValueError(f"mirror_axes must be spatial axes in 0..2 (z, y, x), got {tuple(mirror_axes)}")
    dims = [a + 2 for a in axes]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def _predict_batch(batch: Tensor, predictor: Predictor, flips: list[tuple[int, ...]]) -> Tensor:
    """Forward pass, averaged over flip combinations (mirroring TTA), in fp32."""
    out: Optional[Tensor] = None
    for dims in flips:
        x = torch.flip(batch, dims) if dims else batch
        y = predictor(x)
        if dims:
            y = torch.flip(y, dims)
        y = y.float()
        out = y if out is None else out + y
    assert out is not None
    return out / len(flips) if len(flips) > 1 else out


def _run_tiles(
    image: Tensor,
    predictor: Predictor,
    tile: tuple[int, int, int],
    step_size: float,
    use_gaussian: bool,
    tile_batch_size: int,
    out_channels: Optional[int],
    device: torch.device,
    accum_device: torch.device,
    flips: list[tuple[int, ...]],
    progress: bool,
    z_step: Optional[int] = None,
) -> Tensor:
    """One full sliding-window pass over an already padded (C, Z, Y, X) image."""
    spatial = tuple(image.shape[1:])
    starts = compute_tile_starts(spatial, tile, step_size, z_step)
    slicers = [
        tuple(slice(s, s + t) for s, t in zip(pos, tile)) for pos in itertools.product(*starts)
    ]
    image = image.to(accum_device)  # on the CPU fallback path the image stays in host memory
    if use_gaussian:
        weight = gaussian_importance_map(tile, dtype=torch.float32, device=accum_device)
    else:
        weight = torch.ones(tile, dtype=torch.float32, device=accum_device)
    logger.debug("sliding window: %d tiles of %s over %s (%d passes each)", len(slicers), tile, spatial, len(flips))

    acc: Optional[Tensor] = None
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=accum_device)
    batches = range(0, len(slicers), tile_batch_size)
    total_batches = len(batches)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="sliding window", unit="batch")
    started = last_log = time.monotonic()
    for done, first in enumerate(batches, start=1):
        chunk = slicers[first : first + tile_batch_size]
        batch = torch.stack([image[(slice(None),) + sl] for sl in chunk]).to(device)
        pred = _predict_batch(batch, predictor, flips)
        if pred.ndim != 5 or tuple(pred.shape[2:]) != tile or pred.shape[0] != len(chunk):
            raise ValueError(f"predictor returned shape {tuple(pred.shape)}, expected ({len(chunk)}, C_out, *{tile})")
        if acc is None:
            c_out = pred.shape[1] if out_channels is None else out_channels
            if pred.shape[1] != c_out:
                raise ValueError(f"predictor returned {pred.shape[1]} channels, out_channels={out_channels}")
            acc = torch.zeros((c_out,) + spatial, dtype=torch.float32, device=accum_device)
        pred = pred.to(accum_device)
        for b, sl in enumerate(chunk):
            acc[(slice(None),) + sl] += pred[b] * weight
            weight_sum[sl] += weight
        if not progress and done < total_batches and time.monotonic() - last_log >= PROGRESS_LOG_INTERVAL_S:
            last_log = time.monotonic()
            elapsed = last_log - started
            logger.info("sliding window: %d of %d tiles (%d%%) after %s, about %s left", min(done * tile_batch_size, len(slicers)),
                        len(slicers), 100 * done // total_batches, _duration(elapsed),
                        _duration(elapsed * (total_batches - done) / done))
    assert acc is not None
    acc /= weight_sum
    return acc


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _pad_to_tile(image: Tensor, tile: Sequence[int], pad_value: float, z_margin: int = 0) -> tuple[Tensor, tuple[slice, ...]]:
    """Symmetric constant padding up to the tile size (plus ``z_margin`` slices at both ends of z);
    returns the crop that undoes it."""
    pads: list[tuple[int, int]] = []
    crop: list[slice] = []
    for axis, (size, t) in enumerate(zip(image.shape[1:], tile)):
        margin = z_margin if axis == 0 else 0
        total = max(t - size - 2 * margin, 0) + 2 * margin
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    if not any(sum(p) for p in pads):
        return image, tuple(crop)
    flat = [v for p in reversed(pads) for v in p]  # F.pad wants the last axis first
    return F.pad(image, flat, mode="constant", value=pad_value), tuple(crop)


def sliding_window_predict(
    image: Tensor,
    predictor: Predictor,
    tile_size: Sequence[int],
    step_size: float = 0.5,
    use_gaussian: bool = True,
    tile_batch_size: int = 4,
    out_channels: Optional[int] = None,
    device: DeviceLike = "cpu",
    accumulate_on_device: bool = True,
    use_mirroring: bool = False,
    mirror_axes: Sequence[int] = (0, 1, 2),
    progress: bool = False,
    pad_value: float = 0.0,
    z_step: Optional[int] = None,
) -> Tensor:
    """Predict a whole (C, Z, Y, X) volume tile by tile and blend the tiles.

    The image is padded (constant ``pad_value``) to at least ``tile_size`` and the result cropped
    back. Tiles are batched (``tile_batch_size``) and fed to ``predictor`` as (B, C, z, y, x) on
    ``device``; predictions times weight and the weights are summed in fp32 and divided.
    Mirroring TTA averages all 2^len(mirror_axes) flip combinations, i.e. it costs 2^n forward
    passes per tile (8 for three axes). If accumulating on ``device`` runs out of memory, the
    whole pass is retried with accumulation (and the image) on the CPU, with a warning.
    ``z_step`` (voxels) places a window every ``z_step`` slices along z instead of the step_size rule;
    2.5D slab models use 1 so that no slab border shows as a step (see the module docstring). With it the
    image is also padded by tile_z - 1 slices at both ends of z, so the first and last slices are seen at
    every slab position too and blended like every other slice.
    Returns float32 (C_out, Z, Y, X) on the CPU.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {tuple(image.shape)}")
    tile = tuple(int(t) for t in tile_size)
    if len(tile) != 3:
        raise ValueError(f"tile_size must have 3 entries (z, y, x), got {tile_size}")
    if tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be >= 1, got {tile_batch_size}")
    device = torch.device(device)
    flips = _mirror_combinations(mirror_axes) if use_mirroring else [()]
    kwargs = dict(
        tile=tile, step_size=step_size, use_gaussian=use_gaussian, tile_batch_size=tile_batch_size,
        out_channels=out_channels, device=device, flips=flips, progress=progress, z_step=z_step,
    )
    with torch.inference_mode():
        padded, crop = _pad_to_tile(image.float(), tile, pad_value, z_margin=tile[0] - 1 if z_step is not None else 0)
        if accumulate_on_device:
            try:
                result = _run_tiles(padded, predictor, accum_device=device, **kwargs)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not _is_oom(err):
                    raise
                logger.warning("out of memory with accumulation on %s (%s); retrying with CPU accumulation", device, err)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                result = _run_tiles(padded, predictor, accum_device=torch.device("cpu"), **kwargs)
        else:
            result = _run_tiles(padded, predictor, accum_device=torch.device("cpu"), **kwargs)
        result = result[(slice(None),) + crop]
        return result.to("cpu", torch.float32).contiguous()


@dataclass
class SlidingWindowPredictor:
    """Holds sliding-window settings so a predictor can be configured once and called per case."""

    tile_size: Sequence[int]
    step_size: float = 0.5
    use_gaussian: bool = True
    tile_batch_size: int = 4
    out_channels: Optional[int] = None
    device: DeviceLike = "cpu"
    accumulate_on_device: bool = True
    use_mirroring: bool = False
    mirror_axes: Sequence[int] = (0, 1, 2)
    progress: bool = False
    pad_value: float = 0.0
    z_step: Optional[int] = None

    def __call__(self, image: Tensor, predictor: Predictor) -> Tensor:
        """Run :func:`sliding_window_predict` with the stored settings."""
        return sliding_window_predict(
            image, predictor, self.tile_size, step_size=self.step_size, use_gaussian=self.use_gaussian,
            tile_batch_size=self.tile_batch_size, out_channels=self.out_channels, device=self.device,
            accumulate_on_device=self.accumulate_on_device, use_mirroring=self.use_mirroring,
            mirror_axes=self.mirror_axes, progress=self.progress, pad_value=self.pad_value, z_step=self.z_step,
        )
