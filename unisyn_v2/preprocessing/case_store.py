"""Preprocessed cases on disk: ``<case>.npy`` (C, Z, Y, X), ``<case>_mask.npy`` (brain),
``<case>_head.npy`` (head foreground, hole-filled), ``<case>_lesion.npy`` (lesion labels, only for a case
whose dataset.json entry names a ``lesion_mask``) and ``<case>.json``.

Plain ``.npy`` files are memory-mapped by the training loader, so a patch read touches only the pages
it needs. The properties JSON is written last, atomically: a case counts as done only when its
properties exist, so an interrupted run resumes by skipping finished cases.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.io_utils import IncompleteWriteError, read_json, replace_atomic, write_json_atomic


@dataclass
class PreprocessedCase:
    """Arrays and properties of one preprocessed case."""

    case_id: str
    data: np.ndarray  # float32 (C, Z, Y, X)
    mask: np.ndarray  # uint8 (Z, Y, X) brain mask
    properties: dict[str, Any]
    head: np.ndarray | None = None  # uint8 (Z, Y, X) head mask; None for cases preprocessed before it existed
    lesion: np.ndarray | None = None  # uint8 (Z, Y, X) lesion labels (0 none); None: the case has no lesion mask

    @property
    def modalities(self) -> list[str]:
        """Channel order."""
        return [channel["modality"] for channel in self.properties["channels"]]

    def channel_of(self, modality: str) -> int:
        """Index of a modality's channel."""
        return self.modalities.index(modality)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save via a checked, fsynced temp file: a short write (numpy's errno-less ``N requested and M
    written`` on a full disk) is a disk-full error naming ``path``."""
    def write(temp: Path) -> None:
        with open(temp, "wb") as stream:
            np.save(stream, array)

    replace_atomic(path, write, verify=verify_npy_file, needed=array.nbytes + 128)


def verify_npy_file(path: Path) -> None:
    """Raise IncompleteWriteError unless the .npy file holds every byte its header announces."""
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(stream)
            offset = stream.tell()
    except (ValueError, OSError, EOFError) as error:
        raise IncompleteWriteError(errno.EIO, f"the written file is incomplete (no whole .npy header: {error})") from None
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = Path(path).stat().st_size
    if actual != expected:
        raise IncompleteWriteError(errno.EIO, f"the written file is incomplete ({actual} of {expected} bytes)")


def save_preprocessed_case(folder: Path, case: PreprocessedCase) -> None:
    """Write arrays first and the properties last, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy_atomic(folder / f"{case.case_id}.npy", np.ascontiguousarray(case.data, dtype=np.float32))
    _save_npy_atomic(folder / f"{case.case_id}_mask.npy", np.ascontiguousarray(case.mask, dtype=np.uint8))
    if case.head is not None:
        _save_npy_atomic(folder / f"{case.case_id}_head.npy", np.ascontiguousarray(case.head, dtype=np.uint8))
    lesion_path = folder / f"{case.case_id}_lesion.npy"
    if case.lesion is not None:
        _save_npy_atomic(lesion_path, np.ascontiguousarray(case.lesion, dtype=np.uint8))
    else:  # the lesion mask left dataset.json: a stale map must not steer sampling any more
        lesion_path.unlink(missing_ok=True)
    write_json_atomic(folder / f"{case.case_id}.json", case.properties)


def load_preprocessed_case(folder: Path, case_id: str, mmap: bool = True) -> PreprocessedCase:
    """Read one case; arrays are memory-mapped read-only when ``mmap``."""
    folder = Path(folder)
    mode = "r" if mmap else None
    properties = read_json(folder / f"{case_id}.json")
    data = np.load(folder / f"{case_id}.npy", mmap_mode=mode)
    mask = np.load(folder / f"{case_id}_mask.npy", mmap_mode=mode)
    head_path = folder / f"{case_id}_head.npy"
    head = np.load(head_path, mmap_mode=mode) if head_path.is_file() else None
    lesion_path = folder / f"{case_id}_lesion.npy"
    lesion = np.load(lesion_path, mmap_mode=mode) if lesion_path.is_file() else None
    return PreprocessedCase(case_id, data, mask, properties, head, lesion)


def preprocessed_case_ids(folder: Path) -> list[str]:
    """Ids of every finished case in a folder (those with a properties file)."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".tmp_"))
