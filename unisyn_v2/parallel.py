"""Run one function per case in worker processes: bounded, in order, and no silent hangs.

Each of the ``num_processes`` spawned workers holds at most one case at a time (the parent hands the
next case to whichever worker is free), so memory stays bounded by the number of workers however many
cases there are, and the parent always knows which case each worker is on. A worker that dies (killed,
out of memory, ``os._exit``) is therefore reported with the case it was processing instead of being
waited on forever, and workers exit on their own when the parent dies (``kill -9``), so no orphan
keeps writing after an interrupted run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn, TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)
T = TypeVar("T")
PARENT_POLL_S = 0.5


class WorkerDiedError(RuntimeError):
    """A worker process ended while it was processing a case."""


def map_cases(function: Callable[..., T], context: Any, case_ids: Sequence[str], num_processes: int, progress: bool,
              label: str) -> list[T]:
    """``[function(context, case_id) for case_id in case_ids]``, in up to ``num_processes`` spawned workers.

    ``function`` and ``context`` must be picklable (``context`` travels once per worker). Results keep
    the order of ``case_ids``. The first failing case stops the other workers and its exception is
    raised again here; a worker that dies raises :class:`WorkerDiedError` naming the case.
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
        for worker in range(size):
            parent_end, child_end = spawn.Pipe()
            process = spawn.Process(target=_worker_main, args=(function, context, child_end, os.getpid()),
                                    daemon=True, name=f"unisyn-worker-{worker}")
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


def _worker_main(function: Callable[..., Any], context: Any, connection: Connection, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops us
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
