"""Checkpoint files: atomic ``torch.save`` and ``torch.load(weights_only=True)`` only.

Everything stored must survive the weights-only unpickler, so random-number-generator states are
converted to tensors, lists and dicts of primitives (:func:`capture_rng_state`) and restored with
:func:`restore_rng_state`. A checkpoint is written to a temporary file in the same folder and renamed
over the old one, so a kill during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def save_checkpoint_atomic(path: Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temp file beside ``path`` and ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".tmp_{path.stem}_", suffix=".pth", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with the weights-only unpickler; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or "network_weights" not in state:
        raise RuntimeError(f"{path} is not a unisyn_v2 checkpoint (no 'network_weights')")
    version = state.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if version > CHECKPOINT_FORMAT_VERSION:
        raise RuntimeError(f"{path}: checkpoint format {version} is newer than this unisyn_v2 ({CHECKPOINT_FORMAT_VERSION})")
    return state


def find_resume_checkpoint(fold_folder: Path) -> Path | None:
    """nnU-Net's order for ``--c``: final, else latest, else best; None when there is none."""
    for name in CHECKPOINT_NAMES:
        candidate = Path(fold_folder) / name
        if candidate.is_file():
            return candidate
    return None


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch (CPU and CUDA) generator states, weights-only safe."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": [str(kind), [int(v) for v in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed python, numpy (global) and torch generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
