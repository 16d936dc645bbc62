"""The README's first command, shrunk: unisyn_demo runs every stage end to end and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unisyn_v2.cli import demo as demo_cli
from unisyn_v2.dataset.image_io import read_image

TINY = ["--cases", "5", "--epochs", "1", "--iterations_per_epoch", "2", "--neuroclip_epochs", "1", "--device", "cpu"]


def test_demo_end_to_end_and_rerun(unisyn_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo_out"
    assert demo_cli.main(TINY + ["-o", str(out)]) == 0
    printed, logged = capsys.readouterr()
    assert "--c" not in logged and "starting from scratch" not in logged  # nobody passed --c to a fresh demo
    report = json.loads((out / "demo_report.json").read_text())
    assert report["raw_dataset"] in printed and str(out / "figures") in printed

    raw = Path(report["raw_dataset"])
    cases = json.loads((raw / "dataset.json").read_text())["cases"]
    assert all({i["modality"] for i in c["images"]} == {"T1w", "T2w", "FLAIR", "CT", "FDG-PET"} for c in cases)
    assert "GFMTrainer_T1w-to-FDG-PET+T1w-to-CT" in report["synthesis_model"]
    assert (Path(report["synthesis_model"]) / "fold_0" / "checkpoint_final.pth").is_file()
    assert (Path(report["neuroclip_model"]) / "text_encoder" / "weights.pt").is_file()

    for target in ("FDG-PET", "CT"):
        predictions = sorted(Path(report["predictions"][target]).glob(f"*_{target}.nii.gz"))
        assert predictions, target
        for prediction in predictions:
            case_id = prediction.name[: -len(f"_{target}.nii.gz")]
            synthesis, geometry = read_image(prediction)
            _, source_geometry = read_image(raw / case_id / f"{case_id}_T1w.nii.gz")
            assert geometry.matches(source_geometry) and synthesis.shape == geometry.shape_zyx
        summary = json.loads(Path(report["evaluations"][target]["summary"]).read_text())
        assert set(summary["mean"]) >= {"psnr", "ssim", "mae"}
    assert list((out / "figures").glob("*_T1w_to_CT.png"))
    inputs = json.loads((out / "inputs" / "dataset.json").read_text())["cases"]  # masks: brain-percentile T1w as in training
    assert inputs and all((out / "inputs" / c["brain_mask"]).is_file() for c in inputs)
    assert set(report["validation"]) == {"T1w->CT", "T1w->FDG-PET"}
    assert {"model", "identity", "histogram_matching"} <= set(report["validation"]["T1w->CT"])
    assert {"model_head_mae_hu", "model_bone_dice", "model_bone_mae"} <= set(report["validation"]["T1w->CT"])
    assert "model_bone_dice" not in report["validation"]["T1w->FDG-PET"]
    assert report["lowest_value"]["CT"] >= -1024.0 and report["lowest_value"]["FDG-PET"] >= 0.0  # physical ranges
    ct_summary = json.loads(Path(report["evaluations"]["CT"]["summary"]).read_text())
    assert {"head_mae", "bone_dice", "bone_mae"} <= set(ct_summary["mean"])  # the skull is scored, not only the brain
    assert "validation T1w->CT" in printed and "bone Dice" in printed

    # a second run reuses the phantom, the preprocessed data and both finished trainings
    checkpoint = Path(report["synthesis_model"]) / "fold_0" / "checkpoint_final.pth"
    stamp = checkpoint.stat().st_mtime_ns
    assert demo_cli.main(TINY + ["-o", str(out)]) == 0
    assert "resuming the previous demo run" in capsys.readouterr().err
    assert checkpoint.stat().st_mtime_ns == stamp


def test_demo_caps_the_plans_schedule_for_its_four_directions() -> None:
    from unisyn_v2.demo import DEMO_MAX_EPOCHS, DemoOptions, demo_epochs

    assert demo_epochs(DemoOptions(), 100) == DEMO_MAX_EPOCHS == 60
    assert demo_epochs(DemoOptions(), 30) == 30
    assert demo_epochs(DemoOptions(all_tasks=True), 100) == 100
    assert demo_epochs(DemoOptions(epochs=7), 100) == 7
