"""Run-time settings of a training run (what the command line can change; the plans fix the rest)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from unisyn_v2.parallel import usable_cores

Task = tuple[str, str]  # (source modality, target modality)


def parse_task_filter(text: str | None) -> tuple[Task, ...] | None:
    """``"T1w->CT, CT->FDG-PET"`` -> ``(("T1w", "CT"), ("CT", "FDG-PET"))``; None or "" -> None (all tasks)."""
    if text is None or not text.strip():
        return None
    tasks: list[Task] = []
    for item in text.split(","):
        source, sep, target = item.strip().partition("->")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"task {item.strip()!r} must read SOURCE->TARGET, e.g. T1w->CT")
        # T2w->T2w is a task: a case with T2w images at two protocols (the phantom's --protocols_per_modality)
        tasks.append((source.strip(), target.strip()))
    return tuple(dict.fromkeys(tasks))


def task_key(source: str, target: str) -> str:
    """``T1w->CT``: how a task is named in logs and summaries."""
    return f"{source}->{target}"


def cpu_threads_for_training(loader_workers: int) -> int:
    """Intra-op threads of a CPU-training process: this rank's cores minus its loader processes, at least 1.

    Oversubscribed cores make torch's spinning threads wait on each other: on the 2-core CI machine a GFM
    step with 2 threads beside a loader worker (or another job) was measured up to 30x slower than with 1.
    Cores are those this process may use (affinity and cgroup quota, :func:`unisyn_v2.parallel.usable_cores`);
    the trainer only ever lowers the threads the command's policy set.
    """
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, usable_cores() // ranks - max(0, loader_workers))


def default_num_workers() -> int:
    """Background loader processes: the spare cores shared by this machine's ranks, at most 8 (0 on one core)."""
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(8, (usable_cores() - ranks) // ranks))


@dataclass
class TrainerSettings:
    """Overrides and switches of one run; None means "from the plans" or "automatic".

    Attributes:
        num_epochs, iterations_per_epoch, validation_iterations, batch_size: override the plans.
        seed: seeds python, numpy and torch, network initialisation and every training batch.
        continue_training: resume from checkpoint_final, else latest, else best (``--c``).
        resume_from: with ``continue_training``, the fold's checkpoint file to resume from instead
            (``--resume_from checkpoint_best.pth``: the fallback when checkpoint_latest is damaged).
        validation_only: load checkpoint_final and only run the final validation (``--val``).
        pretrained_weights: a checkpoint whose network weights initialise the network.
        num_workers: background data-loading processes; 0 loads in-process (deterministic tests);
            None: :func:`default_num_workers`. Batches are identical for every value.
        tasks: task filter, (source, target) pairs; None trains every direction.
        save_every: write checkpoint_latest every this many epochs (and always after the last one).
        final_validation: run the sliding-window validation of the held-out cases at the end.
        max_validation_cases: cap the number of held-out cases in the final validation.
        validation_figures: cap the example PNGs of the final validation (None: one per task).
        deterministic: ``torch.use_deterministic_algorithms(True)`` (slower on CUDA).
    """

    num_epochs: int | None = None
    iterations_per_epoch: int | None = None
    validation_iterations: int | None = None
    batch_size: int | None = None
    seed: int = 12345
    continue_training: bool = False
    validation_only: bool = False
    pretrained_weights: Path | None = None
    num_workers: int | None = None
    tasks: tuple[Task, ...] | None = None
    save_every: int = 1
    final_validation: bool = True
    max_validation_cases: int | None = None
    validation_figures: int | None = None
    deterministic: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    resume_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("num_epochs", "iterations_per_epoch", "validation_iterations", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.validation_iterations == 0:
            raise ValueError("validation_iterations must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")
        if self.resume_from is not None:
            if not self.continue_training:
                raise ValueError("--resume_from needs --c (it names the checkpoint --c resumes from)")
            if not self.resume_from.endswith(".pth") or Path(self.resume_from).name != self.resume_from:
                raise ValueError(f"--resume_from takes a checkpoint file name of the fold, e.g. checkpoint_best.pth "
                                 f"(got {self.resume_from!r})")
        if self.continue_training and self.pretrained_weights is not None:
            raise ValueError("--c (continue) and pretrained weights exclude each other")
        if self.pretrained_weights is not None:
            self.pretrained_weights = Path(self.pretrained_weights)
        if isinstance(self.tasks, str):
            self.tasks = parse_task_filter(self.tasks)

    @property
    def resolved_num_workers(self) -> int:
        """num_workers with None resolved."""
        return default_num_workers() if self.num_workers is None else self.num_workers
