"""Reading checkpoints: the weights-only loader and the strict, one-line-error weight loading.

Prediction and training both read checkpoints; writing them (atomic, verified) and the resume state stay
with the trainers (``unisyn_v2.training.checkpointing``). Only weights-only files are read: a pickled
object outside torch's allow-list could run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from unisyn_v2.contracts.model_layout import BEST_CHECKPOINT, CHECKPOINT_NAMES

CHECKPOINT_FORMAT_VERSION = 1


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with the weights-only unpickler; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # a global outside the allow-list: possibly code, never run
        raise RuntimeError(f"refusing to load checkpoint {path}: it holds pickled objects other than tensors and "
                           f"plain data, which could run code (an untrusted or foreign file?); unisyn_v2 only reads "
                           f"weights-only checkpoints ({str(error).splitlines()[0]})") from None
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise RuntimeError(f"cannot read checkpoint {path}: the file is damaged or incomplete ({reason}); "
                           f"{fallback_hint(path)}") from error
    if not isinstance(state, dict) or "network_weights" not in state:
        raise RuntimeError(f"{path} is not a unisyn_v2 checkpoint (no 'network_weights')")
    version = state.get("format_version", CHECKPOINT_FORMAT_VERSION)
    if version > CHECKPOINT_FORMAT_VERSION:
        raise RuntimeError(f"{path}: checkpoint format {version} is newer than this unisyn_v2 ({CHECKPOINT_FORMAT_VERSION})")
    return state


def fallback_hint(path: Path) -> str:
    """What to do about an unreadable checkpoint: the other checkpoints of its fold and the flags that use them."""
    path = Path(path)
    others = [name for name in CHECKPOINT_NAMES if name != path.name and (path.parent / name).is_file()]
    if not others:
        return f"{path.parent.name} holds no other checkpoint: copy it again, or train again"
    first = BEST_CHECKPOINT if BEST_CHECKPOINT in others else others[0]
    return (f"{path.parent.name} also holds {', '.join(others)}: predict with --chk {first}, or resume training "
            f"with --c --resume_from {first} (or copy it again)")


def weight_mismatch(network: torch.nn.Module, state: dict[str, Any], allow_unexpected: bool = False) -> str | None:
    """Why a checkpoint's ``network_weights`` do not fit ``network`` (one line), or None when they do."""
    weights, own = state["network_weights"], network.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [] if allow_unexpected else [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    info = state.get("trainer_info") if isinstance(state.get("trainer_info"), dict) else {}
    network_info = info.get("network") if isinstance(info.get("network"), dict) else {}
    writer = f"written by {info.get('trainer_class', 'an unknown trainer')}"
    writer += f" (network {network_info['kind']})" if network_info.get("kind") else ""
    parts = [f"{len(keys)} {label} key(s), e.g. {keys[0]}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("differently shaped", reshaped)) if keys]
    return f"{writer}; {', '.join(parts)}"


def load_network_weights(network: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """Strict ``load_state_dict`` whose error is one line naming the file and the trainer that wrote it."""
    problem = weight_mismatch(network, state)
    if problem is not None:
        raise RuntimeError(f"checkpoint {path} does not fit this {type(network).__name__}: {problem}; use a checkpoint "
                           "of the same trainer, plans and configuration")
    network.load_state_dict(state["network_weights"])
