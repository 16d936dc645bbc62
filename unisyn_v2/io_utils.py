"""Small file helpers shared by every stage: atomic JSON writes, temp-file naming and clean-up, confined paths.

Every atomic write goes through a temp file named by :func:`temp_prefix` (``.tmp_<host>-<pid>_...``)
beside its target and an ``os.replace``. A process killed with SIGKILL cannot remove its temp file;
:func:`remove_stale_temp_files` lets the next run delete exactly those whose writer is dead, and never
the temp file of a live writer (another fold training into the same model folder, say).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp_"
_HOST = re.sub(r"[^A-Za-z0-9.]", "-", socket.gethostname())[:40] or "host"
_OWNER = re.compile(r"^\.tmp_(?P<host>[A-Za-z0-9.-]*)-(?P<pid>\d+)_")
FOREIGN_TEMP_AGE_S = 24 * 3600.0  # temp files of another host are only removed when older than this


def temp_prefix(tag: str = "") -> str:
    """``.tmp_<host>-<pid>_<tag>``: names the writer, so a later run can tell a dead writer's leftovers."""
    return f"{TEMP_PREFIX}{_HOST}-{os.getpid()}_{tag}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that nobody reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale_temp_file(path: Path) -> bool:
    """A temp file of ours whose writer has died (this host), or an old one of another host."""
    match = _OWNER.match(Path(path).name)
    if match is None:
        return False  # not ours: never touched
    if match["host"] == _HOST:
        return not _pid_alive(int(match["pid"]))
    try:
        return time.time() - Path(path).lstat().st_mtime > FOREIGN_TEMP_AGE_S
    except OSError:
        return False


def remove_stale_temp_files(*folders: Path, recursive: bool = False) -> list[Path]:
    """Delete the temp files (and temp folders) left in ``folders`` by killed writers; returns them."""
    removed: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in (folder.rglob if recursive else folder.glob)(f"{TEMP_PREFIX}*"):
            if not is_stale_temp_file(path):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    if removed:
        logger.info("removed %d temp file(s) left by an interrupted run (e.g. %s)", len(removed), removed[0])
    return removed


def replace_atomic(path: Path, write: Any, tag: str = "") -> Path:
    """``write(temp_path)`` into a temp file beside ``path``, then ``os.replace`` it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=temp_prefix(tag), suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def copy_file_atomic(source: Path, destination: Path) -> Path:
    """``shutil.copyfile`` that readers (and a kill) never see half done."""
    return replace_atomic(destination, lambda temp: shutil.copyfile(source, temp))


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> Path:
    """Write JSON via a temp file in the same folder and a rename, so readers never see half a file."""
    path = Path(path)
    ensure_folder(path.parent)
    handle, temp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=indent, allow_nan=False)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException as error:
        Path(temp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failure(path, error) from error
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


def ensure_folder(folder: Path) -> Path:
    """``mkdir -p`` with an error that says so when a file stands where a folder must go."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create the folder {folder}: {blocking} is a file, not a "
                                 "folder; remove it or choose another output folder") from None
    return folder


def write_failure(path: Path, error: OSError) -> OSError:
    """The error to raise when writing ``path`` failed (disk full, read-only ...): names the file and the fix."""
    reason = error.strerror or str(error) or type(error).__name__
    full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    hint = "free some disk space" if full else "check the folder's permissions and free space"
    return OSError(error.errno, f"cannot write {path}: {reason}; {hint}, then rerun")
