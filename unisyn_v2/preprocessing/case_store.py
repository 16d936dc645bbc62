"""Preprocessed cases on disk: ``<case>.npy`` (C, Z, Y, X), ``<case>_mask.npy`` and ``<case>.json``.

Plain ``.npy`` files are memory-mapped by the training loader, so a patch read touches only the pages
it needs. The properties JSON is written last, atomically: a case counts as done only when its
properties exist, so an interrupted run resumes by skipping finished cases.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.io_utils import read_json, temp_prefix, write_json_atomic


@dataclass
class PreprocessedCase:
    """Arrays and properties of one preprocessed case."""

    case_id: str
    data: np.ndarray  # float32 (C, Z, Y, X)
    mask: np.ndarray  # uint8 (Z, Y, X)
    properties: dict[str, Any]

    @property
    def modalities(self) -> list[str]:
        """Channel order."""
        return [channel["modality"] for channel in self.properties["channels"]]

    def channel_of(self, modality: str) -> int:
        """Index of a modality's channel."""
        return self.modalities.index(modality)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    handle, temp = tempfile.mkstemp(prefix=temp_prefix(), suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_preprocessed_case(folder: Path, case: PreprocessedCase) -> None:
    """Write arrays first and the properties last, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy_atomic(folder / f"{case.case_id}.npy", np.ascontiguousarray(case.data, dtype=np.float32))
    _save_npy_atomic(folder / f"{case.case_id}_mask.npy", np.ascontiguousarray(case.mask, dtype=np.uint8))
    write_json_atomic(folder / f"{case.case_id}.json", case.properties)


def load_preprocessed_case(folder: Path, case_id: str, mmap: bool = True) -> PreprocessedCase:
    """Read one case; arrays are memory-mapped read-only when ``mmap``."""
    folder = Path(folder)
    mode = "r" if mmap else None
    properties = read_json(folder / f"{case_id}.json")
    data = np.load(folder / f"{case_id}.npy", mmap_mode=mode)
    mask = np.load(folder / f"{case_id}_mask.npy", mmap_mode=mode)
    return PreprocessedCase(case_id, data, mask, properties)


def preprocessed_case_ids(folder: Path) -> list[str]:
    """Ids of every finished case in a folder (those with a properties file)."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".tmp_"))
