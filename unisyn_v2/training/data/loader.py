"""Batches of (source, target) patches, in-process or from background processes, resumable exactly.

Every batch is a pure function of (seed, stream, batch index): :class:`BatchBuilder` seeds a fresh
generator with ``[seed, stream, index, item]`` for each item of each batch. So the loader's whole state
is the index of the next batch, batches do not depend on the number of workers, ``--c`` regenerates
exactly the batches an uninterrupted run would have seen, and under data-parallel training each rank
builds its own slice ``items`` of the same global batch (different pairs per rank, the same global
batch for any number of ranks). With ``num_workers > 0``, worker w builds batches
``start + w, start + w + n, ...`` into its own queue and the main process reads the queues in turn.
Workers use numpy/scipy only (and set torch to one thread, see the batchgenerators hang note).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import traceback
from typing import Any, Iterator

import numpy as np

from unisyn_v2.training.data.augmentation import (
    NO_AUGMENTATION, AugmentationParams, augment_intensity, extract_patch, sample_spatial,
)
from unisyn_v2.training.data.cases import CaseCollection
from unisyn_v2.training.data.pair_sampler import PairSampler, SampledPair
from unisyn_v2.training.data.patches import choose_patch_start, lesion_patch_start

STREAMS = {"train": 0, "val": 1}


class BatchBuilder:
    """Builds batch ``index``: for each item a case and (source, target) pair, one patch, augmentation.

    Batch dict: ``source``/``target`` float32 (B, 1, *patch_size) (2.5D: patch (k, H, W)),
    ``source_clean`` (the source before intensity augmentation, the ground truth of the reverse
    direction), ``mask`` (uint8 brain mask, warped with the images), ``head`` (uint8 head mask, likewise),
    ``lesion`` (uint8 lesion mask, likewise; only when some case has a lesion mask with lesions), ``case_ids``, ``tasks``
    (``"T1w->CT"``), ``source_descriptions`` / ``target_descriptions`` (ImageDescription lists), ``index``.
    ``batch_size`` is the global batch; ``items`` ``(start, stop)`` selects this rank's share of it.
    With ``lesion_oversample`` p > 0 and cases with lesions, each item is, with probability p, a pair of a case with
    lesions and a patch centred on one of its lesion voxels (nnU-Net's foreground oversampling); without lesion
    cases (or p = 0) no extra random number is drawn, so batches are exactly those of a build without lesions.
    """

    def __init__(self, cases: CaseCollection, sampler: PairSampler, patch_size: tuple[int, int, int],
                 batch_size: int, is_slab: bool, seed: int, stream: str = "train",
                 augmentation: AugmentationParams | None = None, foreground_fraction_min: float = 0.25,
                 background_keep_probability: float = 0.1, items: tuple[int, int] | None = None,
                 lesion_oversample: float = 0.0) -> None:
        self.cases = cases
        self.sampler = sampler
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.is_slab = is_slab
        self.seed = int(seed)
        self.stream = STREAMS[stream]
        self.augmentation = augmentation if augmentation is not None else NO_AUGMENTATION
        self.foreground_fraction_min = foreground_fraction_min
        self.background_keep_probability = background_keep_probability
        self.items = (0, self.batch_size) if items is None else (int(items[0]), int(items[1]))
        if not 0.0 <= float(lesion_oversample) <= 1.0:
            raise ValueError(f"lesion_oversample must lie in [0, 1] (got {lesion_oversample!r})")
        self.lesion_oversample = float(lesion_oversample)
        self.lesion_case_ids = [c for c in cases.lesion_case_ids if c in sampler.pairs]  # those the task filter keeps
        if not 0 <= self.items[0] < self.items[1] <= self.batch_size:
            raise ValueError(f"items {self.items} is not a non-empty range of a batch of {self.batch_size}")

    def rng_for(self, index: int, item: int) -> np.random.Generator:
        """The generator of item ``item`` of batch ``index``."""
        return np.random.default_rng([self.seed, self.stream, int(index), int(item)])

    def lesion_pair(self, rng: np.random.Generator) -> SampledPair:
        """A pair of a case with lesions: uniform over those cases, then over the case's allowed pairs."""
        case_id = self.lesion_case_ids[int(rng.integers(len(self.lesion_case_ids)))]
        pairs = self.sampler.pairs[case_id]
        source, target = pairs[int(rng.integers(len(pairs)))]
        mods = self.sampler.modalities[case_id]
        return SampledPair(case_id, source, target, mods[source], mods[target])

    def make_batch(self, index: int) -> dict[str, Any]:
        """Build (this rank's items of) batch ``index`` (deterministic)."""
        start, stop = self.items
        shape = (stop - start, 1, *self.patch_size)
        batch: dict[str, Any] = {"source": np.empty(shape, np.float32), "target": np.empty(shape, np.float32),
                                 "source_clean": np.empty(shape, np.float32), "mask": np.empty(shape, np.uint8),
                                 "head": np.empty(shape, np.uint8),
                                 "case_ids": [], "tasks": [], "source_descriptions": [],
                                 "target_descriptions": [], "index": int(index)}
        carry_lesion = self.cases.has_lesions
        if carry_lesion:
            batch["lesion"] = np.empty(shape, np.uint8)
        oversample = self.lesion_oversample > 0 and bool(self.lesion_case_ids)
        for b, item in enumerate(range(start, stop)):
            rng = self.rng_for(index, item)
            on_lesion = oversample and rng.random() < self.lesion_oversample
            pair = self.lesion_pair(rng) if on_lesion else self.sampler.sample(rng)
            data, mask, head = self.cases.arrays(pair.case_id)
            start = (lesion_patch_start(self.cases.lesion_points(pair.case_id), mask.shape, self.patch_size, rng)
                     if on_lesion else None)
            if start is None:
                start = choose_patch_start(mask, self.patch_size, rng, self.foreground_fraction_min,
                                           self.background_keep_probability,
                                           foreground_points=self.cases.foreground_points(pair.case_id))
            spatial = sample_spatial(rng, self.augmentation, self.is_slab)
            volumes = [data[pair.source_channel], data[pair.target_channel], mask, head]
            if carry_lesion:
                lesion = self.cases.lesion(pair.case_id)
                volumes.append(lesion if lesion is not None else np.broadcast_to(np.uint8(0), mask.shape))
            patch = extract_patch(volumes, start, self.patch_size, spatial)
            batch["source"][b, 0] = augment_intensity(patch[0], rng, self.augmentation, self.is_slab)
            batch["source_clean"][b, 0] = patch[0]
            batch["mask"][b, 0] = patch[2] > 0.5
            batch["head"][b, 0] = patch[3] > 0.5
            if carry_lesion:
                batch["lesion"][b, 0] = patch[4] > 0.5
            batch["target"][b, 0] = patch[1]
            info = self.cases.cases[pair.case_id]
            batch["case_ids"].append(pair.case_id)
            batch["tasks"].append(pair.task)
            batch["source_descriptions"].append(info.descriptions[pair.source_channel])
            batch["target_descriptions"].append(info.descriptions[pair.target_channel])
        return batch


class PatchLoader:
    """Iterable of batches from a :class:`BatchBuilder`, with ``state_dict`` = the next batch index.

    Args:
        builder: the batch builder.
        num_workers: 0 builds batches in the calling process; n > 0 uses n background processes.
        num_batches: stop after this many batches per iteration (None: endless).
        restart_each_iteration: every ``iter()`` starts again at batch 0 (validation).
        prefetch: batches each worker may hold ready.
    """

    def __init__(self, builder: BatchBuilder, num_workers: int = 0, num_batches: int | None = None,
                 restart_each_iteration: bool = False, prefetch: int = 2) -> None:
        self.builder = builder
        self.num_workers = int(num_workers)
        self.num_batches = num_batches
        self.restart_each_iteration = restart_each_iteration
        self.prefetch = max(1, int(prefetch))
        self.next_index = 0
        self._pool: _WorkerPool | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"next_index": int}``."""
        return {"next_index": self.next_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state["next_index"]``."""
        self.next_index = int(state["next_index"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.close()
        if self.restart_each_iteration:
            self.next_index = 0
        if self.num_workers > 0:
            self._pool = _WorkerPool(self.builder, self.num_workers, self.next_index, self.prefetch)
        return self._batches(self._pool)

    def _batches(self, pool: "_WorkerPool | None") -> Iterator[dict[str, Any]]:
        produced = 0
        while self.num_batches is None or produced < self.num_batches:
            index = self.next_index
            batch = pool.get(index) if pool is not None else self.builder.make_batch(index)
            self.next_index = index + 1
            produced += 1
            yield batch

    def close(self) -> None:
        """Stop background workers (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _worker_main(builder: BatchBuilder, first: int, step: int, out: Any, stop: Any, parent: int) -> None:
    # Exit without waiting for the queue's feeder thread: after the parent dies (kill -9) nobody reads
    # the pipe, and a worker that waited for it to drain would live on as an orphan.
    out.cancel_join_thread()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it stops us
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # noqa: BLE001 - torch is optional here
        pass
    index = first
    while not stop.is_set() and os.getppid() == parent:
        try:
            message = ("batch", index, builder.make_batch(index))
        except Exception:  # noqa: BLE001 - reported to the main process
            message = ("error", index, traceback.format_exc())
        while not stop.is_set() and os.getppid() == parent:
            try:
                out.put(message, timeout=0.5)
                break
            except queue.Full:
                continue
        if message[0] == "error":
            return
        index += step


class _WorkerPool:
    def __init__(self, builder: BatchBuilder, num_workers: int, start: int, prefetch: int) -> None:
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.start = start
        self.stop = context.Event()
        self.queues = [context.Queue(maxsize=prefetch) for _ in range(num_workers)]
        self.processes = [
            context.Process(target=_worker_main, args=(builder, start + w, num_workers, q, self.stop, os.getpid()),
                            daemon=True, name=f"unisyn-loader-{w}")
            for w, q in enumerate(self.queues)]
        for process in self.processes:
            process.start()

    def get(self, index: int) -> dict[str, Any]:
        worker = (index - self.start) % len(self.queues)
        while True:
            try:
                kind, got, payload = self.queues[worker].get(timeout=1.0)
            except queue.Empty:
                if not self.processes[worker].is_alive():
                    raise RuntimeError(f"data-loading worker {worker} died (exit code "
                                       f"{self.processes[worker].exitcode}); rerun with --num_workers 0 to see why") from None
                continue
            if kind == "error":
                raise RuntimeError(f"data-loading worker {worker} failed on batch {got}:\n{payload}")
            if got != index:
                raise RuntimeError(f"data-loading worker {worker} returned batch {got}, expected {index}")
            return payload

    def close(self) -> None:
        # No draining: a worker may exit in the middle of writing a batch (its feeder thread is
        # cancelled), and reading that half-written message would block forever. Workers notice
        # ``stop`` within 0.5 s (their puts time out), so joining is enough; stragglers are terminated.
        self.stop.set()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for q in self.queues:
            q.cancel_join_thread()
            q.close()
