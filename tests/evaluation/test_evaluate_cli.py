"""``unisyn_evaluate``: protocols recorded, known MAE in HU inside a mask, CSV, auto protocol, figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.cli.evaluate import main

from predictor_fixtures import head_phantom, write_case_image


def _folders(tmp_path: Path, offset: float = 10.0) -> tuple[Path, Path, Path, Path]:
    ref, pred, mask, source = (tmp_path / n for n in ("ref", "pred", "mask", "source"))
    for index in range(2):
        case = f"sub-0{index}"
        ct = head_phantom((12, 16, 16), -1000.0, 40.0, 1200.0, seed=index)
        inside = ct > -500
        write_case_image(ref / f"{case}_CT.nii.gz", ct)
        write_case_image(pred / f"{case}_CT.nii.gz", np.where(inside, ct + offset, ct))
        (pred / f"{case}_CT.json").write_text(json.dumps({"case_id": case, "target_modality": "CT"}))
        write_case_image(mask / f"{case}_CT.nii.gz", inside.astype(np.float32))
        write_case_image(source / f"{case}_T1w.nii.gz", head_phantom((12, 16, 16), 0.0, 600.0, 100.0, seed=index))
    return ref, pred, mask, source


def test_synthrad_mae_in_hu_inside_mask_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ref, pred, mask, _ = _folders(tmp_path)
    out = tmp_path / "eval" / "summary.json"
    assert main(["-ref", str(ref), "-pred", str(pred), "--mask", str(mask), "-o", str(out)]) == 0  # auto -> synthrad (CT)
    summary = json.loads(out.read_text())
    assert summary["protocol"] == "synthrad" and summary["n_cases"] == 2
    assert summary["mean"]["mae"] == pytest.approx(10.0, abs=1e-3)
    assert summary["mean"]["psnr"] == pytest.approx(20 * np.log10(4024.0 / 10.0), abs=1e-3)
    assert summary["region"] == "brain" and summary["mean"]["head_mae"] == pytest.approx(10.0, abs=1e-3)
    assert summary["mean"]["bone_dice"] == 1.0 and summary["mean"]["bone_mae"] == pytest.approx(10.0, abs=1e-3)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["case"] for r in rows] == ["sub-00_CT", "sub-01_CT"] and float(rows[0]["mae"]) == pytest.approx(10.0, abs=1e-3)
    assert float(rows[1]["head_mae"]) == pytest.approx(10.0, abs=1e-3) and rows[1]["modality"] == "CT"
    assert str(out) in capsys.readouterr().out


def test_papers_protocol_is_recorded(tmp_path: Path) -> None:
    ref, pred, _, _ = _folders(tmp_path)
    assert main(["-ref", str(ref), "-pred", str(pred), "--protocol", "papers"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["protocol"] == "papers" and 0 < summary["mean"]["mae"] < 0.05 and summary["mask_dir"] is None


def test_figures_with_source(tmp_path: Path) -> None:
    ref, pred, mask, source = _folders(tmp_path)
    assert main(["-ref", str(ref), "-pred", str(pred), "--figure", "--source", str(source), "--protocol", "synthrad"]) == 0
    figures = sorted((pred / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["sub-00_CT.png", "sub-01_CT.png"] and figures[0].stat().st_size > 1000


def test_missing_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["-ref", str(tmp_path / "nope"), "-pred", str(tmp_path)]) == 2
    assert "folder not found" in capsys.readouterr().err
