"""NeuroCLIP data: (whole-brain image, metadata prompt) pairs and class-balanced contrastive batches.

Images. Every channel of a preprocessed case (``<case>.npy`` (C, Z, Y, X) at the plans' target
spacing) is one sample. As in TUMSyn/UniSyn the image side sees the whole brain at low resolution: the
channel is multiplied by the brain mask (the papers use skull-stripped images), block-averaged by
``downsample`` per axis (2 in the papers) and centre-cropped / zero-padded around the centre of the brain
mask to ``image_size`` (96^3 in the papers; planned). These volumes are small, so each is computed once
and cached in memory as float16, with a margin of ``jitter`` voxels per side for the training
augmentation (random shift of the crop window and left-right flip).

Prompts. ``properties["channels"][i]["prompt"]``, built by ``build_prompt`` with the subject.

Classes. ``properties["channels"][i]["class_key"]`` (``unisyn_v2.metadata.classes.metadata_class_key``,
recomputed from the prompt when absent): modality plus banded parameters (MRI: field strength, echo-time
band, inversion pulse; CT: kVp band; PET: modality and unit). Each batch holds one random sample of
every class, so the negatives that matter (same modality, another protocol) are always present. When
there are more classes than ``max_batch_classes``, every round shuffles the classes and splits them into
``ceil(n / max)`` batches of near-equal size, so each class appears once per round and no batch is left
with a single sample. Within a class the samples are drawn from a reshuffled cycle (all seen before any
repeats). ``samples_per_class`` > 1 (off by default; measured on the phantom without a clear gain in
TE/TR sensitivity) adds same-class negatives with other parameter values.

Duplicate prompts. Two different classes cannot share a prompt (the class is a function of the
prompt's fields), so batches normally hold distinct prompts. When they do not (class keys written by
another rule), :func:`contrastive_loss` treats every pair with identical text as a positive
(multi-positive InfoNCE) instead of pushing an image away from its own text.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from statistics import median_low
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unisyn_v2.io_utils import read_json
from unisyn_v2.metadata.classes import metadata_class_key
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.prompts import ImageDescription, build_prompt, parse_prompt
from unisyn_v2.networks.clip_loss import clip_loss
from unisyn_v2.preprocessing.case_store import load_preprocessed_case


@dataclass(frozen=True)
class NeuroCLIPSample:
    """One (image, prompt) pair: channel ``channel`` of case ``case_id``."""

    case_id: str
    channel: int
    modality: str
    prompt: str
    class_key: str
    metadata: dict[str, Any]
    subject: dict[str, Any]


def collect_samples(folder: Path, case_ids: Sequence[str]) -> list[NeuroCLIPSample]:
    """Every channel of the listed cases, read from the properties JSON only (no arrays)."""
    samples: list[NeuroCLIPSample] = []
    for case_id in case_ids:
        properties = read_json(Path(folder) / f"{case_id}.json")
        subject = properties.get("subject") or {}
        for index, channel in enumerate(properties["channels"]):
            prompt = channel.get("prompt")
            if not prompt:
                prompt = build_prompt(channel["modality"], ImageMetadata.from_dict(channel.get("metadata") or {}),
                                      SubjectMetadata.from_dict(subject))
            class_key = channel.get("class_key") or metadata_class_key(parse_prompt(prompt))
            samples.append(NeuroCLIPSample(case_id, index, channel["modality"], prompt, class_key,
                                           dict(channel.get("metadata") or {}), dict(subject)))
    if not samples:
        raise ValueError(f"no images found for {len(case_ids)} case(s) in {folder}")
    return samples


def holdout_cases(case_ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) for fold 'all': a fixed ``fraction`` of the cases held out of training.

    Cases are ordered by the SHA-1 of their id (the same ids give the same split on every machine, with no
    seed) and the first ``round(fraction * n)`` are held out, at least 1 and at most n - 1; a single case
    cannot be split and is returned as both (the caller warns).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"NeuroCLIP holdout fraction must be in (0, 1), got {fraction}")
    ids = sorted(set(case_ids))
    if len(ids) < 2:
        return ids, list(ids)
    order = sorted(ids, key=lambda c: hashlib.sha1(c.encode("utf-8")).hexdigest())
    count = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    held = set(order[:count])
    return [c for c in ids if c not in held], [c for c in ids if c in held]


def downsample_volume(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor``^3 voxels (edges padded by replication of the mean of what is there)."""
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return F.avg_pool3d(tensor, factor, stride=factor, ceil_mode=True)[0, 0].numpy()


def crop_or_pad_around(volume: np.ndarray, centre: Sequence[float], size: Sequence[int]) -> np.ndarray:
    """The ``size`` window of ``volume`` centred on ``centre`` (z, y, x), zero outside the volume."""
    out = np.zeros(tuple(int(s) for s in size), dtype=np.float32)
    src, dst = [], []
    for c, s, n in zip(centre, size, volume.shape):
        start = int(round(c - s / 2.0))
        lo, hi = max(start, 0), min(start + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def whole_brain_volume(data: np.ndarray, mask: np.ndarray | None, downsample: int, size: Sequence[int]) -> np.ndarray:
    """Masked, block-averaged and centred whole-brain volume of shape ``size`` (float32)."""
    volume = np.asarray(data, dtype=np.float32)
    if mask is not None and np.any(mask):
        volume = volume * (np.asarray(mask) > 0)
        small_mask = downsample_volume((np.asarray(mask) > 0).astype(np.float32), downsample) > 0.5
    else:
        small_mask = None
    small = downsample_volume(volume, downsample)
    if small_mask is not None and small_mask.any():
        coords = np.nonzero(small_mask)
        centre = [0.5 * (c.min() + c.max() + 1) for c in coords]
    else:
        centre = [n / 2.0 for n in small.shape]
    return crop_or_pad_around(small, centre, size)


class WholeBrainCache:
    """Small whole-brain volumes of (case, channel), computed on first use and kept as float16.

    Args:
        folder: the preprocessed data folder (``<data_identifier>``).
        downsample: block size of the mean (NeuroCLIPPlan.downsample).
        image_size: network input (z, y, x) (NeuroCLIPPlan.image_size).
        jitter: extra margin per side kept for random crop shifts in training.
    """

    def __init__(self, folder: Path, downsample: int, image_size: Sequence[int], jitter: int = 0) -> None:
        self.folder = Path(folder)
        self.downsample = int(downsample)
        self.image_size = tuple(int(s) for s in image_size)
        self.jitter = int(jitter)
        self._volumes: dict[tuple[str, int], np.ndarray] = {}

    def _load_case(self, case_id: str) -> None:
        case = load_preprocessed_case(self.folder, case_id, mmap=True)
        padded = [s + 2 * self.jitter for s in self.image_size]
        for channel in range(case.data.shape[0]):
            volume = whole_brain_volume(case.data[channel], case.mask, self.downsample, padded)
            self._volumes[(case_id, channel)] = volume.astype(np.float16)

    def padded(self, case_id: str, channel: int) -> np.ndarray:
        """The cached volume with its jitter margin (float16)."""
        if (case_id, channel) not in self._volumes:
            self._load_case(case_id)
        return self._volumes[(case_id, channel)]

    def volume(self, case_id: str, channel: int, rng: np.random.Generator | None = None,
               flip: bool = False) -> np.ndarray:
        """(Z, Y, X) float32: the centre window, or a randomly shifted (and maybe flipped) one with ``rng``."""
        padded = self.padded(case_id, channel)
        j = self.jitter
        offsets = [j] * 3 if rng is None or j == 0 else [int(o) for o in rng.integers(0, 2 * j + 1, size=3)]
        window = padded[tuple(slice(o, o + s) for o, s in zip(offsets, self.image_size))].astype(np.float32)
        if rng is not None and flip and rng.random() < 0.5:
            window = window[:, :, ::-1]
        return np.ascontiguousarray(window)

    def batch(self, samples: Sequence[NeuroCLIPSample], rng: np.random.Generator | None = None,
              flip: bool = False) -> torch.Tensor:
        """(B, 1, Z, Y, X) float32 tensor of the samples' volumes."""
        return torch.from_numpy(np.stack([self.volume(s.case_id, s.channel, rng, flip) for s in samples])[:, None])


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state as plain ints and strings (safe for weights-only checkpoints)."""
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": {k: int(v) for k, v in state["state"].items()},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def set_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Inverse of :func:`generator_state`."""
    rng.bit_generator.state = {**state, "state": dict(state["state"])}


class ClassBalancedBatchSampler:
    """Infinite batches of sample indices holding one sample of each metadata class (see module docstring).

    Args:
        class_keys: class of every sample.
        max_batch_classes: most classes (= samples) in one batch.
        seed: seed of the sampler's own generator (its state is saved with the trainer).
        samples_per_class: samples drawn per class and batch (1 as in the papers; more adds
            same-class negatives with other parameter values, at most as many as the class holds).
    """

    def __init__(self, class_keys: Sequence[str], max_batch_classes: int, seed: int = 0,
                 samples_per_class: int = 1) -> None:
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        if max_batch_classes < 2:
            raise ValueError(f"max_batch_classes must be >= 2 (a contrastive batch needs negatives), "
                             f"got {max_batch_classes}")
        groups: dict[str, list[int]] = defaultdict(list)
        for index, key in enumerate(class_keys):
            groups[key].append(index)
        if len(groups) < 2:
            raise ValueError(f"NeuroCLIP needs at least 2 metadata classes to contrast, got {sorted(groups)}")
        self.classes = sorted(groups)
        self.members = {key: groups[key] for key in self.classes}
        self.max_batch_classes = int(max_batch_classes)
        self.samples_per_class = int(samples_per_class)
        self.rng = np.random.default_rng(seed)
        self._cycles: dict[str, list[int]] = {key: [] for key in self.classes}
        self._pending: list[list[str]] = []

    @property
    def num_classes(self) -> int:
        """Number of distinct classes."""
        return len(self.classes)

    @property
    def batches_per_round(self) -> int:
        """Batches needed to show every class once."""
        return math.ceil(self.num_classes / max(self.max_batch_classes // self.samples_per_class, 1))

    def _draw(self, key: str) -> list[int]:
        picked: list[int] = []
        for _ in range(min(self.samples_per_class, len(self.members[key]))):
            if not self._cycles[key]:
                cycle = [self.members[key][i] for i in self.rng.permutation(len(self.members[key]))]
                # pop() takes from the end: samples already in this batch go to the front
                self._cycles[key] = [i for i in cycle if i in picked] + [i for i in cycle if i not in picked]
            picked.append(self._cycles[key].pop())
        return picked

    def next_batch(self) -> list[int]:
        """Indices of the next batch (one per class of the current chunk of the round)."""
        if not self._pending:
            order = [self.classes[i] for i in self.rng.permutation(self.num_classes)]
            chunks = np.array_split(np.array(order, dtype=object), self.batches_per_round)
            self._pending = [[str(key) for key in chunk] for chunk in chunks]
        return [index for key in self._pending.pop(0) for index in self._draw(key)]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Generator and cycle state (JSON-like primitives, weights-only safe)."""
        return {"rng": generator_state(self.rng), "cycles": {k: list(v) for k, v in self._cycles.items()},
                "pending": [list(p) for p in self._pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (classes must match)."""
        set_generator_state(self.rng, state["rng"])
        self._cycles = {k: [int(i) for i in state["cycles"].get(k, [])] for k in self.classes}
        self._pending = [[str(k) for k in p if k in self.members] for p in state["pending"]]
        self._pending = [p for p in self._pending if p]


def positive_pairs(prompts: Sequence[str]) -> torch.Tensor:
    """Bool (B, B): True where the two prompts are the same text (the diagonal always)."""
    ids = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    codes = torch.tensor([ids[p] for p in prompts])
    return codes[:, None] == codes[None, :]


def contrastive_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor,
                     prompts: Sequence[str] | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (``clip_loss``); with duplicate prompts, identical texts count as positives.

    With positives P (row-normalised), each direction is the cross-entropy against the soft targets
    P / P.sum(1); with distinct prompts this is exactly ``clip_loss``.
    """
    if prompts is None or len(set(prompts)) == len(prompts):
        return clip_loss(logits_per_image, logits_per_text)
    positives = positive_pairs(prompts).to(logits_per_image.device, logits_per_image.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits_per_image, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits_per_text, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def typical_metadata(samples: Sequence[NeuroCLIPSample]) -> dict[str, dict[str, Any]]:
    """Per modality, the typical acquisition: the low median of each numeric field (an observed value, so
    1.5 T and 3 T never average to 2.25 T; voxel size per axis), the most common value of each text
    field; fields missing in most images stay missing. JSON-ready dicts.
    """
    by_modality: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        by_modality[sample.modality].append(sample.metadata)
    out: dict[str, dict[str, Any]] = {}
    for modality, entries in by_modality.items():
        typical: dict[str, Any] = {}
        for spec in fields(ImageMetadata):
            values = [e[spec.name] for e in entries if e.get(spec.name) is not None]
            if len(values) * 2 < len(entries) or not values:
                continue
            if spec.name == "voxel_size":
                typical[spec.name] = [round(float(median_low(v[i] for v in values)), 3) for i in range(3)]
            elif isinstance(values[0], str):
                typical[spec.name] = Counter(values).most_common(1)[0][0]
            else:
                typical[spec.name] = round(float(median_low(values)), 3)
        out[modality] = typical
    return {m: out[m] for m in sorted(out)}


def modality_prompt(modality: str, typical: dict[str, Any], subject: dict[str, Any] | None = None) -> str:
    """The prompt of a modality with its typical metadata and the given subject."""
    return build_prompt(modality, ImageMetadata.from_dict(typical), SubjectMetadata.from_dict(subject or {}))


def describe(sample: NeuroCLIPSample) -> ImageDescription:
    """The sample's image description (parsed from its prompt)."""
    return parse_prompt(sample.prompt)
