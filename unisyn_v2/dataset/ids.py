"""Resolve ``-d 1``, ``-d 001`` and ``-d Dataset001_Name`` to one dataset folder name."""

from __future__ import annotations

import re
from pathlib import Path

from unisyn_v2.paths import preprocessed_dir, raw_dir, results_dir

_NAME = re.compile(r"^Dataset(\d{3})_(\w[\w.-]*)$")


class DatasetNotFoundError(LookupError):
    """No dataset, or more than one, matches an id."""


def dataset_name_from_id(dataset_id: int, name: str) -> str:
    """Build the canonical folder name ``DatasetXXX_Name``."""
    if not 0 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be within 0..999 (got {dataset_id})")
    if not re.fullmatch(r"\w[\w.-]*", name):
        raise ValueError(f"dataset name may hold letters, digits, '_', '-' and '.' only (got {name!r})")
    return f"Dataset{dataset_id:03d}_{name}"


def parse_dataset_name(folder_name: str) -> tuple[int, str] | None:
    """(id, name) of a canonical folder name, or None."""
    match = _NAME.match(folder_name)
    return (int(match.group(1)), match.group(2)) if match else None


def resolve_dataset_name(identifier: str | int, search: tuple[Path, ...] | None = None) -> str:
    """Turn an id or a name into the one matching ``DatasetXXX_Name`` found in raw, preprocessed or results."""
    text = str(identifier).strip()
    if parse_dataset_name(text):
        return text
    if not text.isdigit():
        raise DatasetNotFoundError(f"{identifier!r} is neither a dataset id (e.g. 1, 001) nor a name DatasetXXX_Name")
    number = int(text)
    folders = search if search is not None else (raw_dir(), preprocessed_dir(), results_dir())
    found = sorted(
        {
            child.name
            for folder in folders
            if folder.is_dir()
            for child in folder.iterdir()
            if child.is_dir() and (parsed := parse_dataset_name(child.name)) and parsed[0] == number
        }
    )
    if not found:
        raise DatasetNotFoundError(
            f"no dataset with id {number:03d} in {', '.join(str(f) for f in folders)} (existing: "
            f"{', '.join(existing_datasets(folders)) or 'none'}); create one (e.g. unisyn_phantom -d {number}) or set UNISYN_RAW"
        )
    if len(found) > 1:
        raise DatasetNotFoundError(f"dataset id {number:03d} is ambiguous: {', '.join(found)}; pass the full name")
    return found[0]


def existing_datasets(folders: tuple[Path, ...] | None = None) -> list[str]:
    """Every ``DatasetXXX_Name`` folder in raw, preprocessed or results (what a wrong id can be corrected to)."""
    folders = folders if folders is not None else (raw_dir(), preprocessed_dir(), results_dir())
    return sorted({child.name for folder in folders if folder.is_dir() for child in folder.iterdir()
                   if child.is_dir() and parse_dataset_name(child.name)})
