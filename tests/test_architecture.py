"""The layering of docs/ARCHITECTURE.md, enforced: import-linter's layers contract in .importlinter must hold, so a
new upward import (inference -> training, preprocessing -> experiment_planning, ...) fails CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layers_contract_holds() -> None:
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([command, str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_no_module_reaches_itself_through_its_imports() -> None:
    """No file-level circles (predictor <-> parallel_prediction, synthesis_trainer <-> validation were two)."""
    import grimp

    graph = grimp.build_graph("unisyn_v2")
    circles = sorted(f"{a} -> {b} -> ... -> {a}" for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                     if graph.chain_exists(importer=b, imported=a))
    assert not circles, "\n".join(circles)
