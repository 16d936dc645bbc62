"""``map_cases``: ordered results, bounded in-flight work, failures and dead workers named by case."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from unisyn_v2.parallel import WorkerDiedError, map_cases


def _work(folder: str, case_id: str) -> str:
    """Counts the cases in flight (one marker file each) and fails or dies on request."""
    running = Path(folder) / "running"
    marker = running / case_id
    marker.touch()
    in_flight = len(list(running.iterdir()))
    with open(Path(folder) / "max_in_flight", "a") as stream:
        stream.write(f"{in_flight}\n")
    time.sleep(0.05)
    marker.unlink()
    if case_id == "bad":
        raise ValueError(f"case {case_id} is broken")
    if case_id == "exit":
        os._exit(3)
    if case_id == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return case_id.upper()


def test_results_in_order_with_bounded_in_flight_work(tmp_path: Path) -> None:
    (tmp_path / "running").mkdir()
    cases = [f"c{i:02d}" for i in range(12)]
    assert map_cases(_work, str(tmp_path), cases, 2, False, "test") == [c.upper() for c in cases]
    counts = [int(line) for line in (tmp_path / "max_in_flight").read_text().split()]
    assert len(counts) == 12 and max(counts) <= 2  # never more cases in flight than workers


@pytest.mark.parametrize("case, expected", [
    ("bad", "case bad is broken"),
    ("exit", r"died \(exit code 3\) while processing case exit"),
    ("kill", r"died \(killed by signal SIGKILL\) while processing case kill"),
])
def test_failures_and_dead_workers_name_the_case(tmp_path: Path, case: str, expected: str) -> None:
    (tmp_path / "running").mkdir()
    error = ValueError if case == "bad" else WorkerDiedError
    start = time.monotonic()
    with pytest.raises(error, match=expected):
        map_cases(_work, str(tmp_path), ["a", case, "b", "c"], 2, False, "test")
    assert time.monotonic() - start < 60  # reported, not waited on


def _sleep(folder: str, case_id: str) -> str:
    (Path(folder) / f"{case_id}.started").touch()
    time.sleep(60)
    return case_id


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from unisyn_v2.io_utils import _pid_alive

    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import os; from test_parallel import _sleep; "
              "from unisyn_v2.parallel import map_cases; "
              f"map_cases(_sleep, {str(tmp_path)!r}, ['a', 'b', 'c'], 2, False, 'test')")
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.started"))) < 2:
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = [int(p) for t in Path(f"/proc/{parent.pid}/task").glob("*") for p in (t / "children").read_text().split()]
    parent.kill()
    parent.wait()
    while any(_pid_alive(pid) for pid in workers):  # each worker notices within PARENT_POLL_S
        assert time.monotonic() < deadline, "workers outlived their killed parent"
        time.sleep(0.05)
