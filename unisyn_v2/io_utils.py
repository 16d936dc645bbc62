"""Small file helpers shared by every stage: atomic JSON writes and confined paths."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> Path:
    """Write JSON via a temp file in the same folder and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=indent, allow_nan=False)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path) -> Any:
    """Read JSON with an error that names the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None


def confined_path(root: Path, relative: str) -> Path:
    """Resolve ``relative`` under ``root``; raise if it escapes (absolute paths, '..', symlinks out)."""
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root_resolved):
        raise ValueError(f"path {relative!r} escapes the folder {root}; paths must be relative and stay inside it")
    return candidate
