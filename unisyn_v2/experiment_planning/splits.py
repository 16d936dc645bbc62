"""Five-fold cross-validation splits by subject, reproducible; a user-provided split wins."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from unisyn_v2.io_utils import copy_file_atomic, read_json, write_json_atomic

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], num_folds: int = 5, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """K folds over sorted ids shuffled with a fixed seed (each case is one subject)."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 cases to split into folds (got {len(ids)})")
    folds = min(num_folds, len(ids))
    order = np.random.RandomState(seed).permutation(len(ids))
    chunks = np.array_split(order, folds)
    splits = []
    for fold in range(folds):
        val = sorted(ids[i] for i in chunks[fold])
        splits.append({"train": sorted(set(ids) - set(val)), "val": val})
    return splits


def validate_splits(splits: object, case_ids: list[str], source: Path) -> list[dict[str, list[str]]]:
    """Check a splits file: a list of {train, val} with known ids; errors name the file and fold."""
    known = set(case_ids)
    if not isinstance(splits, list) or not splits:
        raise ValueError(f"{source}: must be a non-empty list of {{'train': [...], 'val': [...]}} objects")
    for fold, split in enumerate(splits):
        if not isinstance(split, dict) or set(split) != {"train", "val"}:
            raise ValueError(f"{source}: fold {fold} must have exactly the keys 'train' and 'val'")
        unknown = sorted((set(split["train"]) | set(split["val"])) - known)
        if unknown:
            raise ValueError(f"{source}: fold {fold} names unknown case(s) {', '.join(unknown[:5])}")
    return splits


def ensure_splits(preprocessed_root: Path, raw_root: Path, case_ids: list[str]) -> list[dict[str, list[str]]]:
    """Use ``raw/splits_final.json`` if the user gave one, else keep or create the preprocessed one."""
    target = preprocessed_root / SPLITS_FILE
    user = raw_root / SPLITS_FILE
    if user.is_file():
        splits = validate_splits(read_json(user), case_ids, user)
        copy_file_atomic(user, target)
        logger.info("using the user-provided split %s", user)
        return splits
    if target.is_file():
        return validate_splits(read_json(target), case_ids, target)
    splits = make_splits(case_ids)
    write_json_atomic(target, splits)
    logger.info("wrote %d folds to %s", len(splits), target)
    return splits


def fold_cases(splits: list[dict[str, list[str]]], fold: int | str, all_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) ids of a fold; 'all' trains and validates on every case."""
    if fold == "all":
        return sorted(all_ids), sorted(all_ids)
    index = int(fold)
    if not 0 <= index < len(splits):
        raise ValueError(f"fold {fold} does not exist; the splits have folds 0..{len(splits) - 1} (or 'all')")
    return list(splits[index]["train"]), list(splits[index]["val"])
