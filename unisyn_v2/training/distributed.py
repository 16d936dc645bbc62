"""Data-parallel training over several processes: ``torchrun`` or ``unisyn_train ... --num_gpus N``.

One process per GPU (``nccl``) or per CPU worker (``gloo``, for tests and CPU clusters). Every rank
builds the same network from the same seed; :class:`torch.nn.parallel.DistributedDataParallel`
broadcasts rank 0's weights once and all-reduces (averages) the gradients of every backward pass, so
all ranks keep identical weights. The plans' batch is the *global* batch: item ``i`` of batch ``k`` is
drawn from its own generator ``[seed, stream, k, i]`` and rank ``r`` builds only its slice of the items,
so the data seen by the whole job does not depend on the number of ranks. Rank 0 alone writes files
(model folder, checkpoints, log, plot, final validation); checkpoints hold every rank's RNG state, so
``--c`` resumes a distributed run exactly (the results folder must be shared by all ranks).

The trainer uses :class:`DistributedContext` through a few hooks (``run_network``, ``reduce_logs``,
``is_main``); without a process group the context is the single-process one and every hook is a
pass-through.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)  # rank 0 may write checkpoints while others wait


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job (rank 0 of 1 without a process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> "DistributedContext":
        """The initialised process group's rank and size, else the single-process context."""
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
        return cls()

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.enabled:
            dist.barrier()

    def shard(self, global_batch: int) -> tuple[int, int]:
        """The items ``[start, stop)`` of a global batch that this rank builds (sizes differ by at most 1)."""
        return shard_range(global_batch, self.rank, self.world_size)

    def all_gather_object(self, value: Any) -> list[Any]:
        """``[value of rank 0, value of rank 1, ...]`` (``[value]`` alone)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def reduce_means(self, values: Mapping[str, Sequence[float]]) -> dict[str, float]:
        """Per key, the mean of every rank's values, NaN ignored (``np.nanmean`` over the job)."""
        keys = sorted(values)
        totals = torch.zeros((len(keys), 2), dtype=torch.float64)
        for row, key in enumerate(keys):
            present = [float(v) for v in values[key] if not math.isnan(float(v))]
            totals[row, 0], totals[row, 1] = sum(present), len(present)
        if self.enabled and keys:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
            moved = totals.to(device)
            dist.all_reduce(moved)
            totals = moved.cpu()
        return {key: float(totals[row, 0] / totals[row, 1]) if totals[row, 1] > 0 else float("nan")
                for row, key in enumerate(keys)}

    def wrap(self, network: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> Callable[..., Any]:
        """``call(function, *args) = function(network, *args)``, through DDP when distributed.

        A training step runs all its network calls (however many methods it uses) inside ``function``,
        which DDP sees as one forward pass, so the following backward all-reduces the gradients.
        """
        if not self.enabled:
            return lambda function, *args: function(network, *args)
        device_ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(_StepModule(network), device_ids=device_ids,
                                                   find_unused_parameters=find_unused_parameters)


class _StepModule(nn.Module):
    """Lets DDP wrap a whole training step: ``forward(function, *args) = function(network, *args)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, function: Callable[..., Any], *args: Any) -> Any:
        return function(self.network, *args)


def shard_range(global_batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s items of a batch of ``global_batch`` split over ``world_size`` ranks."""
    if global_batch < world_size:
        raise ValueError(f"the batch size ({global_batch}) is smaller than the number of processes ({world_size}): "
                         f"each process needs at least one item; use --batch_size >= {world_size} or fewer processes")
    return rank * global_batch // world_size, (rank + 1) * global_batch // world_size


def environment_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def backend_for(device: torch.device) -> str:
    """nccl for CUDA, gloo otherwise."""
    if device.type == "mps":
        raise ValueError("multi-process training needs CUDA (nccl) or the CPU (gloo); MPS is not supported")
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """Under torchrun / --num_gpus, CUDA means this process's GPU ``cuda:LOCAL_RANK``."""
    if device.type != "cuda" or environment_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[DistributedContext]:
    """Join the process group described by torchrun's variables (if any) for the duration of a run.

    Non-zero ranks log warnings only, so the console and training_log.txt show each epoch once.
    """
    created = False
    if environment_world_size() > 1 and not dist.is_initialized():
        missing = [key for key in ENV_KEYS if key not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with torchrun or --num_gpus")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend_for(device), timeout=PROCESS_GROUP_TIMEOUT)
        created = True
    context = DistributedContext.current()
    package = logging.getLogger("unisyn_v2")
    previous = package.level
    if not context.is_main:
        package.setLevel(logging.WARNING)
    try:
        yield context
    finally:
        package.setLevel(previous)
        if created:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawned(rank: int, world_size: int, port: int, verbose: bool, function: Callable[..., Any], args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, force=True,
                        format=f"[rank {rank}] %(levelname)s: %(message)s")
    if torch.get_num_threads() > 1:  # the ranks share the machine's cores
        torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    function(*args)


def launch(num_processes: int, function: Callable[..., Any], *args: Any, verbose: bool = False,
           start_method: str = "spawn") -> None:
    """Run ``function(*args)`` in ``num_processes`` ranks on this machine (``--num_gpus``).

    A rank that fails stops the others; the error names it and carries its traceback. ``spawn`` (fresh
    interpreters) is the safe default, and needed with CUDA; ``fork`` starts CPU ranks much faster but
    only from a process that has not yet run multi-threaded torch ops (OpenMP does not survive a fork),
    such as the ``unisyn_train`` command before training.
    """
    if environment_world_size() > 1:
        raise RuntimeError("already running under torchrun (WORLD_SIZE is set); drop --num_gpus")
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    port = _free_port()
    logger.info("starting %d training processes (127.0.0.1:%d)", num_processes, port)
    try:
        mp.start_processes(_spawned, args=(num_processes, port, verbose, function, args), nprocs=num_processes,
                           join=True, start_method=start_method)
    except ProcessException as error:
        raise RuntimeError(f"distributed training failed in rank {error.error_index}: {error}") from None
