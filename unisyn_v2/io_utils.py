"""Small file helpers shared by every stage: atomic JSON writes, temp-file naming and clean-up, confined paths.

Every atomic write goes through a temp file named by :func:`temp_prefix` (``.tmp_<host>-<pid>_...``)
beside its target and an ``os.replace``. A process killed with SIGKILL cannot remove its temp file;
:func:`remove_stale_temp_files` lets the next run delete exactly those whose writer is dead, and never
the temp file of a live writer (another fold training into the same model folder, say).

A file counts only once it is known complete (:func:`stage_file`): it is written under the temp name,
flushed to the disk (``fsync``), checked by a verifier of its format (a JSON file parses, a gzip
stream is whole, an array file holds the bytes its header announces), given the mode a plain
``open`` would give it under the current umask, and only then renamed over its target. A full disk
(``ENOSPC``, or a writer that silently stops short) is an error naming the file and the space needed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp_"
_HOST = re.sub(r"[^A-Za-z0-9.]", "-", socket.gethostname())[:40] or "host"
_OWNER = re.compile(r"^\.tmp_(?P<host>[A-Za-z0-9.-]*)-(?P<pid>\d+)_")
FOREIGN_TEMP_AGE_S = 24 * 3600.0  # temp files of another host are only removed when older than this



def finite_or_none(value: Any) -> Any:
    """Non-finite floats (NaN, infinities) as None, recursively through dicts and lists: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value

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


class IncompleteWriteError(OSError):
    """A written file came out shorter or broken although its writer reported success (disk full?)."""

    def __str__(self) -> str:
        return str(self.strerror)


class WriteFailure(OSError):
    """Writing a file failed; ``str()`` is the one-line message alone (no ``[Errno N]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask has to set it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask (mkstemp's temp files are 0600)."""
    return 0o666 & ~current_umask()


def _temp_suffix(path: Path) -> str:
    name = path.name
    return "".join(path.suffixes[-2:]) if name.endswith(".gz") and len(path.suffixes) > 1 else path.suffix


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; some file systems refuse fsync on a folder, which is harmless here."""
    try:
        _fsync_path(folder)
    except OSError:
        pass


def stage_file(path: Path, write: Callable[[Path], Any], verify: Callable[[Path], None] | None = None,
               tag: str = "", needed: int | Callable[[], int | None] | None = None) -> Path:
    """``write(temp)`` into a temp file beside ``path``, fsync, ``verify(temp)``, set the umask's mode.

    Returns the temp file, complete and durable but not yet renamed: :func:`commit_file` puts it in
    place, so several files (an image and its sidecar) can be staged before any of them replaces an old
    one. Any failure removes the temp file and raises :func:`write_failure`'s error for ``path``;
    ``needed`` (bytes, or a callable giving them) is the space the message asks for.
    """
    path = Path(path)
    ensure_folder(path.parent)
    try:
        handle, name = tempfile.mkstemp(prefix=temp_prefix(tag), suffix=_temp_suffix(path), dir=path.parent)
    except OSError as error:
        raise write_failure(path, error, needed) from error
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        _fsync_path(temp)
        if verify is not None:
            verify(temp)
        os.chmod(temp, plain_file_mode())
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failure(path, error, needed) from error
        raise
    return temp


def commit_file(temp: Path, path: Path) -> Path:
    """Rename a staged file over ``path`` (atomic within a folder) and make the rename durable."""
    path = Path(path)
    try:
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise write_failure(path, error) from error
    _fsync_folder(path.parent)
    return path


def replace_atomic(path: Path, write: Any, tag: str = "", verify: Callable[[Path], None] | None = None,
                   needed: int | Callable[[], int | None] | None = None) -> Path:
    """``write(temp_path)`` into a temp file beside ``path``, check it (:func:`stage_file`), rename it over ``path``."""
    return commit_file(stage_file(path, write, verify, tag, needed), path)


def copy_file_atomic(source: Path, destination: Path) -> Path:
    """``shutil.copyfile`` that readers (and a kill) never see half done; the copy must match the source's size."""
    size = Path(source).stat().st_size
    return replace_atomic(destination, lambda temp: shutil.copyfile(source, temp), verify=expect_size(size), needed=size)


def expect_size(size: int) -> Callable[[Path], None]:
    """A verifier: the staged file holds exactly ``size`` bytes."""
    def verify(temp: Path) -> None:
        actual = Path(temp).stat().st_size
        if actual != size:
            raise IncompleteWriteError(errno.EIO, f"the written file is incomplete ({actual} of {size} bytes)")
    return verify


def _verify_json(temp: Path) -> None:
    try:
        json.loads(Path(temp).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise IncompleteWriteError(errno.EIO, f"the written file is incomplete ({Path(temp).stat().st_size} bytes "
                                   f"that do not parse as JSON: {error})") from None


def stage_json(path: Path, data: Any, indent: int = 2) -> Path:
    """JSON staged like :func:`stage_file` (parsed back before it counts); :func:`commit_file` puts it in place."""
    def write(temp: Path) -> None:
        with open(temp, "w") as stream:
            json.dump(data, stream, indent=indent, allow_nan=False)
            stream.write("\n")

    def needed() -> int | None:
        try:
            return len(json.dumps(data, indent=indent, allow_nan=False)) + 1
        except (TypeError, ValueError):
            return None
    return stage_file(path, write, _verify_json, needed=needed)


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> Path:
    """Write JSON via a temp file in the same folder, checked and fsynced, and a rename: readers never see half a file."""
    return commit_file(stage_json(path, data, indent), path)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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


def check_writable_folder(folder: Path, what: str = "output folder") -> None:
    """Fail before any work when no file can be created in ``folder`` (read-only, no permission).

    An existing folder is probed with a temp file (removed at once); a folder still to be made is
    judged by the nearest existing folder above it, untouched.
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return  # nothing to probe, or ensure_folder's "is a file" error comes first
    if existing == folder:
        try:
            handle, name = tempfile.mkstemp(prefix=temp_prefix("probe_"), dir=folder)
            os.close(handle)
            os.unlink(name)
        except OSError as error:
            reason = error.strerror or str(error)
            raise WriteFailure(error.errno, f"{what} {folder} is not writable ({reason}); fix its permissions or "
                               "choose another folder") from None
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise WriteFailure(errno.EACCES, f"{what} {folder} cannot be created: {existing} is not writable; fix its "
                           "permissions or choose another folder")


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


def _size_text(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def write_failure(path: Path, error: OSError, needed: int | Callable[[], int | None] | None = None) -> OSError:
    """The error to raise when writing ``path`` failed (disk full, read-only ...): names the file, the space and the fix.

    A disk-full error is recognised by its errno, by numpy's errno-less ``N requested and M written``, and by a
    file that came out incomplete (:class:`IncompleteWriteError`) while the folder's disk has less free space
    than the file needs.
    """
    if isinstance(error, WriteFailure):
        return error  # already says everything (raised by a nested writer)
    reason = error.strerror or str(error) or type(error).__name__
    short = _SHORT_WRITE.search(str(error)) if error.errno is None else None
    try:
        size = needed() if callable(needed) else needed
    except Exception:  # noqa: BLE001 - the size is only a hint in a message
        size = None
    incomplete = isinstance(error, IncompleteWriteError)
    full = error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or short is not None
    space = [f"needs about {_size_text(size)}"] if size is not None else []
    if full or incomplete:
        folder = next((p for p in Path(path).parents if p.is_dir()), None)
        try:
            free = shutil.disk_usage(folder).free if folder is not None else None
        except OSError:
            free = None
        space += [f"{_size_text(free)} free"] if free is not None else []
        full = full or (incomplete and size is not None and free is not None and free < size)
    notes = (["disk full"] if full else []) + ([f"{short[2]} of {short[1]} bytes written"] if short else [])
    if short is not None:
        reason = "No space left on device"
    if space:
        notes.append(", ".join(space))
    if full:
        message = f"{reason} ({'; '.join(notes)}); free some disk space, then rerun"
    elif incomplete:
        message = (f"{reason}; the disk may be full or failing{' (' + '; '.join(notes) + ')' if notes else ''}; "
                   "free some disk space or check the disk, then rerun")
    else:
        message = f"{reason}; check the folder's permissions and free space, then rerun"
    return WriteFailure(errno.ENOSPC if full else error.errno, f"cannot write {path}: {message}")
