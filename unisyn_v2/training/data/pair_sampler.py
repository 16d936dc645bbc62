"""Pick a case, then an ordered (source, target) pair of its images: every direction, one model.

As the papers' joint training, each item of a batch is a random case and a random ordered pair of two
different modalities of that case (T1w->CT and CT->T1w are both tasks). A case holding one modality at
several protocols (a T2w at TE 40 and at TE 200 ms) also gives same-modality pairs: T2w(TE 40) ->
T2w(TE 200) is exactly the supervision that teaches what TE does. Such a pair needs two different prompts
(given per channel); an image is never paired with itself. A task filter restricts the pairs (task-specific
models of the ablation; ``T2w->T2w`` is a task too); cases holding none of the allowed pairs are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from unisyn_v2.training.settings import Task, task_key


@dataclass(frozen=True)
class SampledPair:
    """One sampled item: the case and the channels of its source and target images."""

    case_id: str
    source_channel: int
    target_channel: int
    source_modality: str
    target_modality: str

    @property
    def task(self) -> str:
        """``source->target``."""
        return task_key(self.source_modality, self.target_modality)


def _distinct(modalities: Sequence[str], prompts: Sequence[str] | None, i: int, j: int) -> bool:
    """Channels i and j are two different images: other modalities, or one modality at two protocols."""
    if modalities[i].lower() != modalities[j].lower():
        return True
    return prompts is not None and prompts[i] != prompts[j]


class PairSampler:
    """Uniform over cases, then uniform over the case's allowed ordered pairs.

    Args:
        case_modalities: case id -> modality of each channel, in channel order.
        tasks: allowed (source, target) modality pairs; None allows every pair.
        seed: seed of the sampler's own generator (used when ``sample`` gets no generator).
        case_prompts: case id -> prompt of each channel; two channels of one modality form a pair only
            when their prompts differ (without prompts, only pairs of different modalities).
    """

    def __init__(self, case_modalities: Mapping[str, Sequence[str]], tasks: Sequence[Task] | None = None,
                 seed: int = 0, case_prompts: Mapping[str, Sequence[str]] | None = None) -> None:
        allowed = None if tasks is None else {(s.lower(), t.lower()) for s, t in tasks}
        self.pairs: dict[str, list[tuple[int, int]]] = {}
        self.modalities = {case: tuple(mods) for case, mods in case_modalities.items()}
        for case_id in sorted(case_modalities):
            mods = self.modalities[case_id]
            prompts = None if case_prompts is None else tuple(case_prompts[case_id])
            if prompts is not None and len(prompts) != len(mods):
                raise ValueError(f"case {case_id}: {len(prompts)} prompts for {len(mods)} channels")
            pairs = [(i, j) for i in range(len(mods)) for j in range(len(mods))
                     if i != j and _distinct(mods, prompts, i, j)
                     and (allowed is None or (mods[i].lower(), mods[j].lower()) in allowed)]
            if pairs:
                self.pairs[case_id] = pairs
        if not self.pairs:
            available = sorted({task_key(m[i], m[j]) for m in self.modalities.values()
                                for i in range(len(m)) for j in range(len(m)) if m[i] != m[j]})
            wanted = "every task" if tasks is None else ", ".join(task_key(*t) for t in tasks)
            raise ValueError(f"no case holds a (source, target) pair for {wanted}; tasks in these cases: "
                             f"{', '.join(available) or 'none (every case has a single modality)'}")
        self.case_ids = list(self.pairs)
        self.rng = np.random.default_rng(seed)

    def tasks(self) -> list[Task]:
        """The (source, target) modality pairs that can be drawn, sorted."""
        found = {(self.modalities[c][i], self.modalities[c][j]) for c, pairs in self.pairs.items() for i, j in pairs}
        return sorted(found)

    def sample(self, rng: np.random.Generator | None = None) -> SampledPair:
        """Draw one pair with ``rng`` (default: the sampler's own generator)."""
        rng = self.rng if rng is None else rng
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        pairs = self.pairs[case_id]
        source, target = pairs[int(rng.integers(len(pairs)))]
        mods = self.modalities[case_id]
        return SampledPair(case_id, source, target, mods[source], mods[target])

    def state_dict(self) -> dict[str, Any]:
        """The own generator's state (primitives only)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rng.bit_generator.state = dict(state["bit_generator"])
