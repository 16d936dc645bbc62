"""Shared fixtures: every test gets private raw/preprocessed/results folders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def unisyn_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point UNISYN_RAW/PREPROCESSED/RESULTS at temporary folders."""
    dirs = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(f"UNISYN_{name.upper()}", str(path))
    return dirs
