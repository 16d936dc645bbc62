"""Per-epoch training curves: one value per epoch per key, saved in checkpoints and drawn as progress.png.

Keys follow a convention that decides the panel: ``train_*`` / ``val_*`` losses (any key ending in
``loss``), validation metrics ``val_psnr`` and ``val_ssim`` (other ``val_*`` metrics too), ``lr`` and
``epoch_time``. Drawing uses matplotlib's object API on the Agg canvas (headless, no pyplot state).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from unisyn_v2.io_utils import replace_atomic

logger = logging.getLogger(__name__)
PACKAGE_LOGGER = "unisyn_v2"


class ProgressLogger:
    """Collects ``{key: [value per epoch]}``; values for epochs without an entry are NaN."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}
        self.num_epochs_logged = 0

    def log_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        """Record every key of ``logs`` for ``epoch`` (0-based); later calls for the same epoch overwrite."""
        for key, value in logs.items():
            series = self.values.setdefault(key, [])
            while len(series) <= epoch:
                series.append(math.nan)
            series[epoch] = float(value)
        self.num_epochs_logged = max(self.num_epochs_logged, epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """Weights-only-safe copy."""
        return {"values": {k: list(v) for k, v in self.values.items()}, "num_epochs_logged": self.num_epochs_logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.values = {str(k): [float(x) for x in v] for k, v in state.get("values", {}).items()}
        self.num_epochs_logged = int(state.get("num_epochs_logged", 0))

    def plot(self, path: Path, title: str = "") -> Path | None:
        """Write progress.png atomically (losses, validation metrics, lr, epoch time); None if empty."""
        if not self.num_epochs_logged:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        epochs = list(range(self.num_epochs_logged))
        panels = {
            "losses": sorted(k for k in self.values if k.endswith("loss")),
            "validation metrics": sorted(k for k in self.values
                                         if k.startswith("val_") and not k.endswith("loss")),
            "learning rate": [k for k in ("lr",) if k in self.values],
            "epoch time (s)": [k for k in ("epoch_time",) if k in self.values],
        }
        fig = Figure(figsize=(10, 11), dpi=80, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(4, 1, sharex=True)
        for ax, (name, keys) in zip(axes, panels.items()):
            for key in keys:
                series = self.values[key] + [math.nan] * (self.num_epochs_logged - len(self.values[key]))
                ax.plot(epochs, series, marker="." if len(epochs) < 30 else None, label=key)
            ax.set_ylabel(name)
            if name == "learning rate" and keys:
                ax.set_yscale("log")
            if keys:
                ax.legend(loc="best", fontsize="small")
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("epoch")
        if title:
            fig.suptitle(title)
        return replace_atomic(Path(path), lambda temp: fig.savefig(temp, format="png"), tag="progress_")


def format_epoch_line(epoch: int, num_epochs: int, logs: dict[str, float]) -> str:
    """``epoch 3/300: train_loss 0.1234, val_psnr 25.12, lr 1.0e-04, 12.3 s``."""
    parts = []
    for key, value in logs.items():
        if key == "epoch_time":
            continue
        parts.append(f"{key} {value:.2e}" if key == "lr" else f"{key} {value:.4g}")
    time_text = f", {logs['epoch_time']:.1f} s" if "epoch_time" in logs else ""
    return f"epoch {epoch + 1}/{num_epochs}: " + ", ".join(parts) + time_text


def attach_file_log(path: Path) -> tuple[logging.Handler, int]:
    """Append the package log (INFO and up) to ``path`` until :func:`detach_file_log`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    package = logging.getLogger(PACKAGE_LOGGER)
    previous = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    return handler, previous


def detach_file_log(attached: tuple[logging.Handler, int]) -> None:
    """Undo :func:`attach_file_log`."""
    handler, previous = attached
    package = logging.getLogger(PACKAGE_LOGGER)
    package.removeHandler(handler)
    package.setLevel(previous)
    handler.close()
