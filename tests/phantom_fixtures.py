"""Partial-volume-free phantom inputs for the signal tests: one slab of pure tissue per tissue along z."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stripes(tissues: Sequence[str], thickness: int = 6, inplane: int = 12) -> dict[str, np.ndarray]:
    """Fractional tissue maps (z, y, x): slab i along z is pure ``tissues[i]``."""
    shape = (len(tissues) * thickness, inplane, inplane)
    maps = {t: np.zeros(shape, dtype=np.float32) for t in tissues}
    for i, t in enumerate(tissues):
        maps[t][i * thickness:(i + 1) * thickness] = 1.0
    return maps


def stripe_means(image: np.ndarray, tissues: Sequence[str], thickness: int = 6) -> dict[str, float]:
    """Mean of each tissue's slab, one slice away from the slab borders (blur-free)."""
    return {t: float(image[i * thickness + 1:(i + 1) * thickness - 1].mean()) for i, t in enumerate(tissues)}
