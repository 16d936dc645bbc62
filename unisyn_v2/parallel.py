"""Run one function per case in worker processes: bounded, in order, and no silent hangs.

Each of the ``num_processes`` spawned workers holds at most one case at a time (the parent hands the
next case to whichever worker is free), so memory stays bounded by the number of workers however many
cases there are, and the parent always knows which case each worker is on. A worker that dies (killed,
out of memory, ``os._exit``) is therefore reported with the case it was processing instead of being
waited on forever, and workers exit on their own when the parent dies (``kill -9``), so no orphan
keeps writing after an interrupted run.

It also holds the CPU thread policy of every entry point (:func:`decide_threads`,
:func:`apply_thread_policy`): one budget of threads per command, split between its worker processes,
so that torch's intra-op threads, OpenMP/BLAS and SimpleITK never ask for more cores than there are.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn, TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)
T = TypeVar("T")
PARENT_POLL_S = 0.5


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")
_budget: list[int] = []  # the budget set by apply_thread_policy in this process (workers split it)


@dataclass(frozen=True)
class ThreadPolicy:
    """Threads of this process (``threads``) and where the number came from (for the log line)."""

    threads: int
    source: str  # "--threads", "OMP_NUM_THREADS", "cores", "torch default"
    cores: int  # usable cores (affinity and cgroup quota)
    busy_cores: int  # cores taken by other work when decided (1-minute load average)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cpusets) capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` counts the machine; a container limited to 2 CPUs on a 64-core host would otherwise
    start 64 threads per process.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(float(quota) / float(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def decide_threads(requested: int | None = None, processes: int = 1, environ: Mapping[str, str] | None = None,
                   cores: int | None = None, load: float | None = None) -> ThreadPolicy:
    """The threads each of ``processes`` worker processes of one command should use.

    Precedence: ``requested`` (``--threads N``, the command's total), else ``OMP_NUM_THREADS`` (per
    process, as OpenMP reads it, and as torchrun sets it per rank), else the idle cores shared by this
    machine's ranks (``LOCAL_WORLD_SIZE``): usable cores minus those busy with other work (the 1-minute
    load average, rounded down), at least 1. Busy cores count because spinning OpenMP threads that share
    a core wait on each other: on the 2-core development machine, predictions at torch's default 2
    threads beside another job took 196-324 s and 10-100 s at 1 thread (issue 21). ``requested=0``
    keeps torch's default (the behaviour before this policy).
    """
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else max(1, cores)
    processes = max(1, processes)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    busy = min(cores - 1, max(0, int(load)))
    if requested is not None and requested < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {requested}")
    if requested == 0:
        return ThreadPolicy(0, "torch default", cores, busy)
    if requested:
        return ThreadPolicy(max(1, requested // processes), "--threads", cores, busy)
    text = environ.get("OMP_NUM_THREADS", "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS must be a whole number of threads, got {text!r}") from None
        if value >= 1:
            return ThreadPolicy(value, "OMP_NUM_THREADS", cores, busy)
    ranks = max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return ThreadPolicy(max(1, (cores - busy) // ranks // processes), "cores", cores, busy)


def apply_thread_policy(requested: int | None = None) -> ThreadPolicy:
    """Set this process's torch, SimpleITK and OpenMP/BLAS threads by :func:`decide_threads`; every CLI calls it.

    The result is also this command's budget, which :func:`map_cases` splits between its workers.
    """
    policy = decide_threads(requested)
    _budget[:] = [policy.threads] if policy.threads else []
    if not policy.threads:
        logger.debug("threads: torch's default (--threads 0)")
        return policy
    import torch

    if torch.get_num_threads() != policy.threads:
        torch.set_num_threads(policy.threads)
    try:
        import SimpleITK

        SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(policy.threads)
    except Exception:  # noqa: BLE001 - SimpleITK is optional here
        pass
    try:  # numpy's BLAS (threadpoolctl is installed with scikit-learn/scikit-image; optional)
        from threadpoolctl import threadpool_limits

        threadpool_limits(policy.threads)
    except Exception:  # noqa: BLE001
        pass
    logger.debug("threads: %d (%s; %d usable cores, %d busy)", policy.threads, policy.source, policy.cores,
                 policy.busy_cores)
    return policy


def worker_threads(num_processes: int) -> int:
    """Threads for each of ``num_processes`` workers: the command's budget (else torch's threads) split evenly."""
    if _budget:
        total = _budget[0]
    else:
        import torch

        total = torch.get_num_threads()
    return max(1, total // max(1, num_processes))


@contextmanager
def _thread_environment(threads: int) -> Iterator[None]:
    """OpenMP/BLAS variables that a spawned child reads at start-up (its torch and numpy), then the old ones."""
    saved = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    os.environ.update({name: str(threads) for name in THREAD_ENV_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class WorkerDiedError(RuntimeError):
    """A worker process ended while it was processing a case."""


def map_cases(function: Callable[..., T], context: Any, case_ids: Sequence[str], num_processes: int, progress: bool,
              label: str) -> list[T]:
    """``[function(context, case_id) for case_id in case_ids]``, in up to ``num_processes`` spawned workers.

    ``function`` and ``context`` must be picklable (``context`` travels once per worker). Results keep
    the order of ``case_ids``. The first failing case stops the other workers and its exception is
    raised again here; a worker that dies raises :class:`WorkerDiedError` naming the case. Each worker
    runs :func:`worker_threads` threads (the command's budget split between the workers).
    """
    if num_processes <= 1 or len(case_ids) <= 1:
        return [function(context, case_id) for case_id in tqdm(case_ids, desc=label, disable=not progress)]
    pool = _Pool(function, context, min(num_processes, len(case_ids)))
    results: dict[int, T] = {}
    pending = list(enumerate(case_ids))[::-1]
    try:
        with tqdm(total=len(case_ids), desc=label, disable=not progress) as bar:
            for worker in range(len(pool.processes)):
                pool.assign(worker, *pending.pop())
            while pool.busy:
                worker, index, result = pool.next_result(label)
                results[index] = result
                bar.update()
                if pending:
                    pool.assign(worker, *pending.pop())
    finally:
        pool.close()
    return [results[index] for index in range(len(case_ids))]


class _Pool:
    """Workers with one pipe each; ``busy[worker] = (index, case_id)`` of the case it holds."""

    def __init__(self, function: Callable[..., Any], context: Any, size: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.connections: list[Connection] = []
        self.processes = []
        self.busy: dict[int, tuple[int, str]] = {}
        threads = worker_threads(size)
        for worker in range(size):
            parent_end, child_end = spawn.Pipe()
            process = spawn.Process(target=_worker_main, args=(function, context, child_end, os.getpid(), threads),
                                    daemon=True, name=f"unisyn-worker-{worker}")
            with _thread_environment(threads):  # read by the child's torch/numpy as they load
                process.start()
            child_end.close()  # so a dying worker's pipe reads as closed here
            self.connections.append(parent_end)
            self.processes.append(process)

    def assign(self, worker: int, index: int, case_id: str) -> None:
        self.busy[worker] = (index, case_id)
        try:
            self.connections[worker].send((index, case_id))
        except (BrokenPipeError, EOFError, OSError):
            pass  # it died; next_result reports it with the case

    def next_result(self, label: str) -> tuple[int, int, Any]:
        """(worker, index, result) of the next finished case; raises for a failure or a dead worker."""
        by_connection = {id(c): w for w, c in enumerate(self.connections)}
        by_sentinel = {p.sentinel: w for w, p in enumerate(self.processes)}
        while True:
            ready = wait([self.connections[w] for w in self.busy] + [self.processes[w].sentinel for w in self.busy],
                         timeout=5.0)
            for item in ready:
                if isinstance(item, Connection):
                    worker = by_connection[id(item)]
                    try:
                        kind, index, payload = item.recv()
                    except (EOFError, OSError):
                        self._died(worker, label)
                    except Exception as error:  # noqa: BLE001 - e.g. an exception that cannot be rebuilt here
                        raise RuntimeError(f"{label}: case {self.busy[worker][1]} failed and its error could not "
                                           f"be read back ({error})") from None
                    _index, case_id = self.busy.pop(worker)
                    if kind == "error":
                        self._failed(case_id, payload, label)
                    return worker, index, payload
            for item in ready:  # a dead worker with nothing left to read
                if not isinstance(item, Connection) and by_sentinel[item] in self.busy:
                    self._died(by_sentinel[item], label)

    def _died(self, worker: int, label: str) -> NoReturn:
        _index, case_id = self.busy[worker]
        process = self.processes[worker]
        process.join(timeout=1.0)
        code = process.exitcode
        how = (f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        raise WorkerDiedError(f"{label}: the worker process died ({how}) while processing case {case_id} "
                              f"(killed, out of memory, or a crash in a native library); rerun to resume, with "
                              f"fewer processes if memory is short")

    @staticmethod
    def _failed(case_id: str, payload: Any, label: str) -> NoReturn:
        error, text = payload
        logger.debug("%s: case %s failed in a worker:\n%s", label, case_id, text)
        if isinstance(error, BaseException):
            raise error  # the same type as in-process, so callers and the CLI handle it alike
        raise RuntimeError(f"{label}: case {case_id}: {text.strip().splitlines()[-1]}")

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except (BrokenPipeError, EOFError, OSError):
                pass
        deadline = time.monotonic() + (5.0 if not self.busy else 0.0)
        for process in self.processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=5.0)
        for connection in self.connections:
            connection.close()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # the parent is gone (kill -9): stop writing


def _worker_main(function: Callable[..., Any], context: Any, connection: Connection, parent: int,
                 threads: int = 1) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops us
    _budget[:] = [threads]
    try:
        import SimpleITK

        SimpleITK.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except Exception:  # noqa: BLE001 - SimpleITK is optional here
        pass
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, case_id = task
        try:
            message: tuple[str, int, Any] = ("ok", index, function(context, case_id))
        except Exception as error:  # noqa: BLE001 - sent to the parent, which raises it
            text = f"case {case_id}:\n{traceback.format_exc()}"
            message = ("error", index, (error, text))
        try:
            connection.send(message)
        except Exception:  # noqa: BLE001 - an unpicklable result or exception
            connection.send(("error", index, (None, f"case {case_id}: the result could not be sent back:\n"
                                                     f"{traceback.format_exc()}")))
