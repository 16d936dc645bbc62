"""The CPU thread policy (issue 21): one budget per command, split between its workers, applied by every CLI."""

from __future__ import annotations

import os
from importlib.metadata import entry_points

import pytest
import torch

from unisyn_v2 import parallel
from unisyn_v2.parallel import decide_threads, map_cases, usable_cores


def test_precedence_threads_option_then_omp_then_idle_cores() -> None:
    env = {"OMP_NUM_THREADS": "3"}
    assert decide_threads(8, 1, env, cores=16, load=0).threads == 8  # --threads wins
    assert decide_threads(8, 2, env, cores=16, load=0).threads == 4  # ... and is the command's total
    assert decide_threads(None, 1, env, cores=16, load=0).threads == 3  # OMP_NUM_THREADS: per process
    assert decide_threads(None, 1, {}, cores=16, load=0).threads == 16
    assert decide_threads(None, 4, {}, cores=16, load=0).threads == 4  # four workers share the cores
    assert decide_threads(None, 1, {"LOCAL_WORLD_SIZE": "2"}, cores=16, load=0).threads == 8  # two ranks
    assert decide_threads(0, 1, env, cores=16, load=0).threads == 0  # 0: torch's default, as before the policy


def test_cores_busy_with_other_work_are_left_alone() -> None:
    assert decide_threads(None, 1, {}, cores=2, load=0.4).threads == 2  # idle machine: both cores
    assert decide_threads(None, 1, {}, cores=2, load=1.7).threads == 1  # another job on one core
    assert decide_threads(None, 1, {}, cores=2, load=9.0).threads == 1  # never fewer than one
    assert decide_threads(None, 1, {}, cores=16, load=5.2).threads == 11
    assert decide_threads(4, 1, {}, cores=2, load=9.0).threads == 4  # the user's number is not second-guessed


def test_bad_values_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        decide_threads(None, 1, {"OMP_NUM_THREADS": "two"}, cores=2, load=0)
    with pytest.raises(ValueError, match="--threads"):
        decide_threads(-1, 1, {}, cores=2, load=0)


def test_usable_cores_follow_the_affinity() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def _threads_seen(_context: None, case_id: str) -> tuple[int, str | None]:
    import torch as worker_torch

    return worker_torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def test_workers_split_the_commands_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "_budget", [4])
    before = os.environ.get("OMP_NUM_THREADS")
    seen = map_cases(_threads_seen, None, ["a", "b"], 2, False, "test")
    assert seen == [(2, "2"), (2, "2")]  # 4 threads for the command, 2 per worker: torch and OpenMP alike
    assert os.environ.get("OMP_NUM_THREADS") == before  # the parent's environment is left as it was


class _Applied(Exception):
    """Raised by the patched policy so that no command body runs."""


def _arguments(script: str) -> list[str]:
    required = {
        "unisyn_phantom": ["-d", "5"], "unisyn_render_phantom": ["--case", "1", "-o", "x.nii.gz"],
        "unisyn_convert_bids": ["bids", "-d", "5"], "unisyn_train": ["5", "gfm"],
        "unisyn_predict": ["-i", "in", "-o", "out", "--target", "CT"], "unisyn_evaluate": ["-ref", "a", "-pred", "b"],
        "unisyn_demo": [], "unisyn_export_model": ["-d", "5", "-o", "m.zip"], "unisyn_install_model": ["m.zip"],
    }
    if script in required:
        return required[script]
    if script in {"unisyn_plan_and_preprocess", "unisyn_extract_fingerprint", "unisyn_plan_experiment",
                  "unisyn_preprocess", "unisyn_verify_dataset"}:
        return ["-d", "5"]
    raise AssertionError(f"{script}: a new command line; add its required arguments here so the test checks its threads")


def test_every_command_line_applies_the_policy_with_its_threads_option(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[int | None] = []

    def fake_decide(value: int | None = None, *args: object, **kwargs: object) -> None:
        requested.append(value)
        raise _Applied

    monkeypatch.setattr(parallel, "decide_threads", fake_decide)
    scripts = [e for e in entry_points(group="console_scripts") if e.value.startswith("unisyn_v2.")]
    assert len(scripts) >= 14
    for script in scripts:
        with pytest.raises(_Applied):
            script.load()([*_arguments(script.name), "--threads", "3"])
        assert requested.pop() == 3, script.name


def test_policy_sets_torch_threads_and_zero_leaves_them() -> None:
    threads = torch.get_num_threads()
    try:
        assert parallel.apply_thread_policy(1).threads == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert parallel.apply_thread_policy(0).source == "torch default" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
        parallel._budget.clear()
