"""The device training and prediction run on: ``auto`` picks CUDA, then MPS, then the CPU; a named device must exist."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cuda``, ``cuda:1``, ``mps`` or ``cpu`` must be available."""
    if isinstance(name, torch.device):
        return name
    text = str(name).lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to this torch build; use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return device
