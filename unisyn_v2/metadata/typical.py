"""The typical protocol of a modality in a dataset: what a bare target name (``--target T2w``) means.

It must be a protocol that was really used: a per-field median can mix sequences (an MPRAGE TI with a
gradient-echo TR), and the most frequent protocol is arbitrary when every image has its own drawn
parameters. So: among the protocols with the most common set of numeric fields (the usual sequence),
the one nearest to the per-field median, distances measured in standard deviations of the log value.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def _numeric_keys(protocol: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(k for k, v in protocol.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0))


def typical_protocol(protocols: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The medoid protocol (see the module docstring); ties go to the first in sorted JSON order."""
    if not protocols:
        raise ValueError("typical_protocol needs at least one protocol")
    ordered = sorted(protocols, key=lambda p: json.dumps(p, sort_keys=True))
    pattern = Counter(_numeric_keys(p) for p in ordered).most_common(1)[0][0]
    usual = [p for p in ordered if _numeric_keys(p) == pattern]
    if not pattern:
        return dict(usual[0])
    table = np.log(np.array([[float(p[k]) for k in pattern] for p in usual], dtype=np.float64))
    spread = table.std(axis=0)
    spread[spread == 0] = 1.0
    distance = (((table - np.median(table, axis=0)) / spread) ** 2).sum(axis=1)
    return dict(usual[int(np.argmin(distance))])
