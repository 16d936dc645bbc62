"""Shared fixtures: every test gets private raw/preprocessed/results folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture
def unisyn_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point UNISYN_RAW/PREPROCESSED/RESULTS at temporary folders."""
    dirs = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(f"UNISYN_{name.upper()}", str(path))
    return dirs


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core runner: one intra-op thread avoids spinning threads (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
