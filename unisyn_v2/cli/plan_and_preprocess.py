"""``unisyn_plan_and_preprocess`` and its single steps: thin parsers over the Python API."""

from __future__ import annotations

import argparse
import sys

from unisyn_v2.cli.common import add_common_arguments, run_cli
from unisyn_v2.dataset.ids import resolve_dataset_name
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.paths import raw_dir


def _verify(dataset: str) -> int:
    name = resolve_dataset_name(dataset)
    root = raw_dir() / name
    problems = verify_dataset_integrity(root)
    if problems:
        print(f"{root}: {len(problems)} problem(s) found:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{root}: dataset is valid")
    return 0


def verify_main(argv: list[str] | None = None) -> int:
    """``unisyn_verify_dataset -d ID``: check a raw dataset; writes nothing."""
    parser = argparse.ArgumentParser(description="Check a raw dataset (files, geometry, metadata); writes nothing.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (1, 001) or name (Dataset001_Name)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda a: _verify(a.dataset), args)
