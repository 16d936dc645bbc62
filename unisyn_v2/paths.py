"""Where raw, preprocessed and results folders live.

Set ``UNISYN_RAW``, ``UNISYN_PREPROCESSED`` and ``UNISYN_RESULTS`` to place them anywhere. When a
variable is unset the folder defaults to ``$UNISYN_HOME/{raw,preprocessed,results}`` with
``UNISYN_HOME`` defaulting to ``~/unisyn_v2_data``, so a new user can run the demo without exporting
anything. Paths are resolved at call time, never at import, so tests can change the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~") / "unisyn_v2_data"


def data_home() -> Path:
    """The parent of the three default folders."""
    return Path(os.environ.get("UNISYN_HOME", str(DEFAULT_HOME))).expanduser()


def _folder(variable: str, default_name: str) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else data_home() / default_name


def raw_dir() -> Path:
    """Folder holding raw datasets ``DatasetXXX_Name`` (``UNISYN_RAW``)."""
    return _folder("UNISYN_RAW", "raw")


def preprocessed_dir() -> Path:
    """Folder holding fingerprints, plans and preprocessed arrays (``UNISYN_PREPROCESSED``)."""
    return _folder("UNISYN_PREPROCESSED", "preprocessed")


def results_dir() -> Path:
    """Folder holding trained models (``UNISYN_RESULTS``)."""
    return _folder("UNISYN_RESULTS", "results")
