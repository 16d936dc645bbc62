"""benchmarks/gpu_check.py in its CPU mode (``--device cpu --tiny``): every section runs and reports, so the one
GPU run (issue 21, item 4) finds a working script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(next(p for p in Path(__file__).resolve().parents if (p / "benchmarks").is_dir()) / "benchmarks"))
import gpu_check  # noqa: E402 - the benchmark folder is not a package


def test_tiny_cpu_run_reports_every_section(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["device"]["torch"] == torch.__version__ and result["device"]["date_utc"]
    rows = result["memory"]["rows"]
    assert {(r["configuration"], r["kind"]) for r in rows} == {("2.5d", "gfm"), ("2.5d", "crossattn"), ("3d", "gfm"), ("3d", "crossattn")}
    for row in rows:
        assert row["preset"] == "cpu" and row["memory_precision"] == "fp32" and row["estimated_gib"] > 0
        assert row["batch"] >= 2 and row["it_per_s"] > 0 and "error" not in row
    assert result["training_speed"]["it_per_s"] > 0 and result["training_speed"]["batch"] >= 2
    prediction = result["prediction"]["rows"]
    assert [r["variant"] for r in prediction] == ["fp32", "bf16 (cpu half)", "bf16 + channels-last"]
    for row in prediction:
        assert row["finite"] and row["shape"] == [12, 40, 36]
        assert row["tiles"] == 4 * row["network_calls"] > 0 and row["api_s"] >= row["forward_s"] > 0
    assert "rows" in result["monai"] or "monai" in result["monai"]["skipped"]
    assert not result["skipped"] and result["total_s"] < result["time_guard_s"]
    assert "planner vs measured" in (tmp_path / "result.md").read_text()


def test_time_guard_skips_what_does_not_fit(tmp_path: Path) -> None:
    assert gpu_check.main(["--device", "cpu", "--tiny", "--time-guard", "0", "--sections", "memory",
                           "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["memory"]["rows"] == [] and any(s.startswith("(a) cpu") for s in result["skipped"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
