"""Checkpoint files: atomic ``torch.save`` and ``torch.load(weights_only=True)`` only.

Everything stored must survive the weights-only unpickler, so random-number-generator states are
converted to tensors, lists and dicts of primitives (:func:`capture_rng_state`) and restored with
:func:`restore_rng_state`. A checkpoint is written to a temporary file in the same folder and renamed
over the old one, so a kill during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import logging
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unisyn_v2.io_utils import IncompleteWriteError, replace_atomic
from unisyn_v2.models.weights import (
    CHECKPOINT_FORMAT_VERSION, CHECKPOINT_NAMES, load_checkpoint, load_network_weights, weight_mismatch,
)

logger = logging.getLogger(__name__)



def save_checkpoint_atomic(path: Path, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsynced and checked whole, then ``os.replace`` it into place."""
    return replace_atomic(path, lambda temp: torch.save(state, temp), tag=f"{Path(path).stem}_", verify=verify_checkpoint_file,
                          needed=lambda: _tensor_bytes(state))


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) state: about what its checkpoint file needs on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def verify_checkpoint_file(path: Path) -> None:
    """Raise IncompleteWriteError unless ``path`` is a whole torch zip archive (its central directory, written
    last, is present and every member's stored extent lies inside the file)."""
    size = Path(path).stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise IncompleteWriteError(errno.EIO, f"the written file is incomplete ({size} bytes; {error})") from None
    if not members or any(m.header_offset + m.compress_size > size for m in members):
        raise IncompleteWriteError(errno.EIO, f"the written file is incomplete ({size} bytes; members are cut off)")


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


class CheckpointMixin:
    """Checkpoint state of a :class:`~unisyn_v2.training.trainer_base.TrainerBase` (kept here for size).

    Uses the trainer's ``network``, ``optimizer``, ``lr_scheduler``, ``grad_scaler``, ``train_loader``, ``distributed``,
    ``progress``, epoch / best-metric fields and the hooks ``trainer_info``,
    ``extra_checkpoint_state`` and ``load_extra_checkpoint_state``.
    """

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit."""
        assert self.network is not None and self.optimizer is not None
        loader_state = getattr(self.train_loader, "state_dict", None)
        rng_state = capture_rng_state()
        rng_states = self.distributed.all_gather_object(rng_state)  # each rank resumes its own generators
        return {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "network_weights": self.network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "lr_scheduler_state": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "current_epoch": self.current_epoch,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "rng_state": rng_state,
            "rng_states_by_rank": rng_states if len(rng_states) > 1 else None,
            "data_state": loader_state() if callable(loader_state) else None,
            "progress": self.progress.state_dict(),
            "trainer_info": self.trainer_info(),
            "init_args": {"dataset_name": self.dataset_name, "plans_name": self.plans.plans_name,
                          "configuration": self.configuration, "fold": str(self.fold), "seed": self.settings.seed},
            "extra": self.extra_checkpoint_state(),
        }

    def save_checkpoint(self, name: str) -> Path | None:
        """Write ``fold_folder / name`` atomically (rank 0; every rank must call it: the state is gathered)."""
        state = self.checkpoint_state()
        if not self.distributed.is_main:
            return None
        path = save_checkpoint_atomic(self.fold_folder / name, state)
        logger.debug("saved %s", path)
        return path

    def load_checkpoint(self, path: Path | str, restore_training_state: bool = True) -> dict[str, Any]:
        """Load weights (and, by default, optimiser, scheduler, epoch, RNG and data state)."""
        self.initialize()
        path = Path(path) if Path(path).is_absolute() or Path(path).exists() else self.fold_folder / str(path)
        state = load_checkpoint(path, map_location=self.device)
        assert self.network is not None and self.optimizer is not None
        load_network_weights(self.network, state, path)
        if restore_training_state:
            self.optimizer.load_state_dict(state["optimizer_state"])
            if self.lr_scheduler is not None and state.get("lr_scheduler_state") is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler_state"])
            if self.grad_scaler is not None and state.get("grad_scaler_state"):
                self.grad_scaler.load_state_dict(state["grad_scaler_state"])
            self.current_epoch = int(state["current_epoch"])
            self.best_metric, self.best_epoch = state.get("best_metric"), state.get("best_epoch")
            self.progress.load_state_dict(state.get("progress") or {})
            by_rank = state.get("rng_states_by_rank") or []
            same_size = len(by_rank) == self.distributed.world_size
            restore_rng_state(by_rank[self.distributed.rank] if same_size else state["rng_state"])
            loader_load = getattr(self.train_loader, "load_state_dict", None)
            if callable(loader_load) and state.get("data_state") is not None:
                loader_load(state["data_state"])
            self.load_extra_checkpoint_state(state.get("extra") or {})
        logger.info("loaded %s (epoch %d)", path, int(state["current_epoch"]))
        return state

    def load_pretrained_weights(self, path: Path) -> None:
        """Initialise the network from another checkpoint's weights: every key of the network, same shapes
        (like nnU-Net; keys only the checkpoint has are ignored)."""
        assert self.network is not None
        state = load_checkpoint(path, map_location=self.device)
        problem = weight_mismatch(self.network, state, allow_unexpected=True)
        if problem is not None:
            raise ValueError(f"pretrained weights {path} do not fit {type(self).__name__}'s network: {problem}; "
                             "initialise from a checkpoint of the same network kind, plans and configuration")
        _, unexpected = self.network.load_state_dict(state["network_weights"], strict=False)
        logger.info("pretrained weights from %s (ignored %d keys)", path, len(unexpected))
