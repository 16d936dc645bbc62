"""Run one function per case in worker processes, with a progress bar and no silent hangs."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tqdm import tqdm

logger = logging.getLogger(__name__)
T = TypeVar("T")


def map_cases(function: Callable[..., T], context: Any, case_ids: Sequence[str], num_processes: int, progress: bool, label: str) -> list[T]:
    """``[function(context, case_id) for case_id in case_ids]``, in ``num_processes`` spawned workers.

    Results keep the order of ``case_ids``. A worker that dies (killed, out of memory) raises a
    RuntimeError naming the step instead of waiting forever.
    """
    if num_processes <= 1 or len(case_ids) <= 1:
        return [function(context, case_id) for case_id in tqdm(case_ids, desc=label, disable=not progress)]
    try:
        with ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(function, context, case_id) for case_id in case_ids]
            return [future.result() for future in tqdm(futures, desc=label, disable=not progress)]
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"{label}: a worker process died (killed or out of memory); rerun with fewer processes (-np) to resume"
        ) from error
