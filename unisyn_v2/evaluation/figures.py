"""Qualitative comparison figures: central axial/coronal/sagittal slices of source, synthesis,
ground truth and absolute error, with the physical aspect ratio taken from the voxel spacing.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display needed),
so it is safe in worker processes and headless servers. Display orientation assumes an
identity direction matrix: z runs upwards in coronal and sagittal views.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unisyn_v2.io_utils import replace_atomic

logger = logging.getLogger(__name__)

DEFAULT_TITLES = ("Source", "Synthesis", "Ground truth", "|Error|")
VIEW_NAMES = ("axial", "coronal", "sagittal")


def _central_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial (y, x), coronal (z, x) and sagittal (z, y) slices through the volume centre."""
    z, y, x = (s // 2 for s in volume.shape)
    return [volume[z], volume[:, y, :], volume[:, :, x]]


def _window(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Robust display window from percentiles; never degenerate."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def save_comparison_figure(
    path: Union[str, os.PathLike],
    source: Optional[np.ndarray],
    synthesis: np.ndarray,
    reference: np.ndarray,
    titles: Sequence[str] = DEFAULT_TITLES,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    suptitle: Optional[str] = None,
    dpi: int = 100,
) -> Path:
    """Write a PNG grid (rows: axial/coronal/sagittal; columns: source, synthesis, ground truth,
    |synthesis - ground truth|). Synthesis and ground truth share the ground truth's display
    window so intensity errors stay visible. ``source`` may be None (column dropped); all volumes
    share ``spacing_zyx`` and shape. Written atomically; returns the path.
    """
    synthesis = np.asarray(synthesis, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if synthesis.ndim != 3 or synthesis.shape != reference.shape:
        raise ValueError(f"synthesis {synthesis.shape} and reference {reference.shape} must be equal 3D shapes")
    sz, sy, sx = (float(s) for s in spacing_zyx)
    error = np.abs(synthesis - reference)
    ref_window = _window(reference)
    columns: list[tuple[str, np.ndarray, tuple[float, float], str]] = []
    titles = list(titles)
    if len(titles) != 4:
        raise ValueError(f"titles needs 4 entries (source, synthesis, ground truth, error), got {titles}")
    if source is not None:
        source = np.asarray(source, dtype=np.float32)
        if source.shape != reference.shape:
            raise ValueError(f"source {source.shape} must have the reference's shape {reference.shape}")
        columns.append((titles[0], source, _window(source), "gray"))
    columns.append((titles[1], synthesis, ref_window, "gray"))
    columns.append((titles[2], reference, ref_window, "gray"))
    columns.append((titles[3], error, (0.0, _window(error, 0.0, 99.5)[1]), "magma"))
    # row aspect = spacing along the displayed rows / spacing along the displayed columns
    aspects = (sy / sx, sz / sx, sz / sy)

    fig = Figure(figsize=(3.0 * len(columns) + 0.8, 9.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, len(columns), squeeze=False)
    for col, (title, volume, (vmin, vmax), cmap) in enumerate(columns):
        for row, (slice_2d, aspect) in enumerate(zip(_central_slices(volume), aspects)):
            ax = axes[row][col]
            origin = "upper" if row == 0 else "lower"
            im = ax.imshow(slice_2d, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, origin=origin, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
            if col == 0:
                ax.set_ylabel(VIEW_NAMES[row])
        if cmap != "gray":
            fig.colorbar(im, ax=[axes[r][col] for r in range(3)], shrink=0.6)
    if suptitle:
        fig.suptitle(suptitle)

    path = Path(path)
    replace_atomic(path, lambda temp: fig.savefig(temp, format="png"))
    logger.debug("wrote comparison figure %s", path)
    return path
