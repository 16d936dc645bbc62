"""The papers' learning-rate schedule: Adam at lr0, halved every third of training (UniSyn: 1e-4,
halved every 100 of 300 epochs), stepped once per epoch.

The scheduler's state is only the epoch count, so resuming is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def step_decay_lr(initial_lr: float, epoch: int, num_epochs: int, every_fraction: float = 1.0 / 3.0,
                  gamma: float = 0.5) -> float:
    """lr at ``epoch`` (0-based): ``initial_lr * gamma ** (epoch // step)``, step = round(num_epochs * every_fraction)."""
    if num_epochs < 1 or not 0.0 < every_fraction <= 1.0:
        raise ValueError(f"need num_epochs >= 1 and every_fraction in (0, 1], got {num_epochs}, {every_fraction}")
    step = max(1, int(round(num_epochs * every_fraction)))
    return float(initial_lr) * gamma ** (max(epoch, 0) // step)


class EpochScheduler:
    """Sets every parameter group's lr to :meth:`current_lr` of the current epoch; its state is the epoch.

    ``step()`` is called once at the end of each epoch (as ``torch.optim.lr_scheduler``), so resuming
    from a checkpoint's epoch count is exact. Subclasses define :meth:`current_lr`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, num_epochs: int) -> None:
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.num_epochs = int(num_epochs)
        self.epoch = 0

    def current_lr(self) -> float:
        """The lr of the current epoch."""
        raise NotImplementedError(f"{type(self).__name__} must define current_lr()")

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()

    def step(self) -> None:
        """Advance one epoch."""
        self.epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """Primitives only (weights-only safe)."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch (the schedule's constants come from the trainer, the epoch from the file)."""
        self.epoch = int(state["epoch"])
        self._apply()


class StepDecayScheduler(EpochScheduler):
    """The papers' schedule: :func:`step_decay_lr` of the current epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, num_epochs: int,
                 every_fraction: float = 1.0 / 3.0, gamma: float = 0.5) -> None:
        super().__init__(optimizer, initial_lr, num_epochs)
        self.every_fraction = float(every_fraction)
        self.gamma = float(gamma)
        self._apply()

    def current_lr(self) -> float:
        """The lr of the current epoch."""
        return step_decay_lr(self.initial_lr, self.epoch, self.num_epochs, self.every_fraction, self.gamma)

    def state_dict(self) -> dict[str, Any]:
        """The epoch plus the constants (for inspection; only the epoch is restored)."""
        return {**super().state_dict(), "initial_lr": self.initial_lr, "num_epochs": self.num_epochs,
                "every_fraction": self.every_fraction, "gamma": self.gamma}


class WarmupCosineScheduler(EpochScheduler):
    """Per-epoch lr: linear warm-up to ``initial_lr`` over ``warmup_epochs``, then cosine decay towards 0."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, num_epochs: int,
                 warmup_fraction: float = 0.2) -> None:
        super().__init__(optimizer, initial_lr, max(int(num_epochs), 1))
        self.warmup_epochs = int(round(self.num_epochs * warmup_fraction))
        self._apply()

    def current_lr(self) -> float:
        """lr of the current epoch."""
        e, w, n = self.epoch, self.warmup_epochs, self.num_epochs
        if e < w:
            return self.initial_lr * (e + 1) / (w + 1)
        progress = (e - w) / max(n - w, 1)
        return self.initial_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
