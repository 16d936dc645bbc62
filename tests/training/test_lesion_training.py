"""Lesion masks (issue 17): dataset.json's optional ``lesion_mask`` is checked like the brain mask, preprocessed into
``<case>_lesion.npy``, and steers training: the plans' ``training.lesion_oversample`` share of patches is centred on
lesion voxels and ``training.lesion_weight`` scales the synthesis loss there."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training_fixtures import DATASET_NAME, make_trainer, tiny_plans, write_text_encoder, write_training_dataset
from unisyn_v2.contracts.plans import Plans, PlansError, TrainingPlan
from unisyn_v2.dataset.description import DatasetError, load_dataset_description
from unisyn_v2.dataset.image_io import Geometry, write_image
from unisyn_v2.dataset.integrity import verify_dataset_integrity
from unisyn_v2.preprocessing.case_store import load_preprocessed_case, save_preprocessed_case
from unisyn_v2.preprocessing.run import preprocess_dataset
from unisyn_v2.training.data.cases import CaseCollection
from unisyn_v2.training.data.loader import BatchBuilder
from unisyn_v2.training.data.pair_sampler import PairSampler
from unisyn_v2.training.gfm_trainer import GFMTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEOMETRY = Geometry((12, 16, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _labels() -> np.ndarray:
    labels = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    labels[5:7, 6:9, 6:9] = 3  # a tumour
    labels[4, 5, 5] = 1  # and an infarct voxel
    return labels


def _raw_dataset(root: Path, lesion: np.ndarray | None = None, healthy_lesion_map: bool = True) -> Path:
    """Two cases (T1w + CT, brain masks); c1 with a lesion map, c2 with an empty one (or none)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in GEOMETRY.shape_zyx], indexing="ij")
    brain = (zz**2 + yy**2 + xx**2) < 0.7
    cases = []
    for case_id in ("c1", "c2"):
        t1 = np.where(brain, 500 + 300 * rng.random(brain.shape), 0).astype(np.float32)
        ct = np.where(brain, 30 + 10 * rng.random(brain.shape), -1000).astype(np.float32)
        write_image(root / case_id / "t1.nii.gz", t1, GEOMETRY)
        write_image(root / case_id / "ct.nii.gz", ct, GEOMETRY)
        write_image(root / case_id / "brain.nii.gz", brain.astype(np.uint8), GEOMETRY, dtype=np.uint8)
        entry = {"id": case_id, "brain_mask": f"{case_id}/brain.nii.gz",
                 "images": [{"file": f"{case_id}/t1.nii.gz", "modality": "T1w"}, {"file": f"{case_id}/ct.nii.gz", "modality": "CT"}]}
        labels = (_labels() if lesion is None else lesion) if case_id == "c1" else np.zeros(GEOMETRY.shape_zyx, np.uint8)
        if case_id == "c1" or healthy_lesion_map:
            write_image(root / case_id / "lesions.nii.gz", labels, GEOMETRY, dtype=labels.dtype.type)
            entry["lesion_mask"] = f"{case_id}/lesions.nii.gz"
        cases.append(entry)
    (root / "dataset.json").write_text(json.dumps({"name": "Lesions", "cases": cases}))
    return root


def _edit_dataset_json(root: Path, edit) -> None:
    data = json.loads((root / "dataset.json").read_text())
    edit(data)
    (root / "dataset.json").write_text(json.dumps(data))


def test_dataset_json_lesion_mask_is_parsed_and_checked(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "ds")
    description = load_dataset_description(root)
    assert description.case("c1").lesion_mask == "c1/lesions.nii.gz"
    _edit_dataset_json(root, lambda d: d["cases"][0].update(lesion_mask=3))
    with pytest.raises(DatasetError, match=r"case c1, field lesion_mask\] 'lesion_mask' must be a file path"):
        load_dataset_description(root)
    _edit_dataset_json(root, lambda d: d["cases"][0].update(lesion_mask="../outside.nii.gz"))
    with pytest.raises(DatasetError, match="field lesion_mask"):
        load_dataset_description(root)
    _edit_dataset_json(root, lambda d: (d["cases"][0].update(lesion_mask="c1/lesions.nii.gz"),
                                        d["cases"][1].update(id="c1_lesion")))
    with pytest.raises(DatasetError, match="collides with the preprocessed lesion mask of case 'c1'"):
        load_dataset_description(root)


def test_integrity_accepts_empty_maps_and_names_bad_ones(tmp_path: Path) -> None:
    assert verify_dataset_integrity(_raw_dataset(tmp_path / "ok")) == []  # c2's all-zero map is a healthy case
    fractional = _labels().astype(np.float32)
    fractional[0, 0, 0] = 0.5
    problems = verify_dataset_integrity(_raw_dataset(tmp_path / "fractional", fractional))
    assert [(p.case, p.file, p.field) for p in problems] == [("c1", "c1/lesions.nii.gz", "lesion_mask")]
    assert "integer labels" in problems[0].message
    root = _raw_dataset(tmp_path / "offgrid")
    write_image(root / "c1" / "lesions.nii.gz", np.zeros((12, 16, 15), np.uint8), replace(GEOMETRY, shape_zyx=(12, 16, 15)),
                dtype=np.uint8)
    problems = verify_dataset_integrity(root)
    assert [(p.case, p.file, p.field) for p in problems] == [("c1", "c1/lesions.nii.gz", "geometry")]
    (root / "c1" / "lesions.nii.gz").unlink()
    assert [(p.file, p.field) for p in verify_dataset_integrity(root)] == [("c1/lesions.nii.gz", "lesion_mask")]


def test_preprocessing_keeps_the_labels_and_drops_a_stale_map(tmp_path: Path) -> None:
    root = _raw_dataset(tmp_path / "ds", healthy_lesion_map=False)
    out = preprocess_dataset(root, tiny_plans(), tmp_path / "pre", num_processes=1, progress=False)
    case = load_preprocessed_case(out, "c1")
    (z0, z1), (y0, y1), (x0, x1) = case.properties["bbox_zyx"]
    assert case.lesion.dtype == np.uint8 and np.array_equal(case.lesion, _labels()[z0:z1, y0:y1, x0:x1])
    assert case.properties["lesion_voxels"] == 19
    healthy = load_preprocessed_case(out, "c2")
    assert healthy.lesion is None and "lesion_voxels" not in healthy.properties
    _edit_dataset_json(root, lambda d: d["cases"][0].pop("lesion_mask"))  # the user takes the map away
    preprocess_dataset(root, tiny_plans(), tmp_path / "pre", num_processes=1, progress=False)
    assert not (out / "c1_lesion.npy").exists() and load_preprocessed_case(out, "c1").lesion is None
    _edit_dataset_json(root, lambda d: d["cases"][0].update(lesion_mask="c1/small.nii.gz"))
    write_image(root / "c1" / "small.nii.gz", np.zeros((6, 8, 8), np.uint8), replace(GEOMETRY, shape_zyx=(6, 8, 8)),
                dtype=np.uint8)
    with pytest.raises(ValueError, match=r"case c1, file c1/small.nii.gz, field lesion_mask: shape \(6, 8, 8\) differs"):
        preprocess_dataset(root, tiny_plans(), tmp_path / "pre", num_processes=1, progress=False)


def test_plans_lesion_fields_are_validated() -> None:
    data = tiny_plans().to_dict()
    assert data["training"]["lesion_oversample"] == 0.33 and data["training"]["lesion_weight"] == 1.0
    for name in ("lesion_oversample", "lesion_weight"):  # a plans file written before the fields loads with defaults
        del data["training"][name]
    assert Plans.from_dict(data).training.lesion_oversample == 0.33
    for name, bad in (("lesion_oversample", 1.5), ("lesion_oversample", -0.1), ("lesion_weight", -1.0)):
        broken = tiny_plans().to_dict()
        broken["training"][name] = bad
        with pytest.raises(PlansError, match=rf"p\.json\.training\.{name}: {bad!r} is out of range"):
            Plans.from_dict(broken, source="p.json")


def _add_lesion(folder: Path, case_id: str) -> np.ndarray:
    """Give a toy case a small lesion cube (labels 2) off the brain centre."""
    case = load_preprocessed_case(folder, case_id, mmap=False)
    lesion = np.zeros(case.mask.shape, np.uint8)
    lesion[9:11, 20:23, 10:13] = 2
    properties = {**case.properties, "lesion_voxels": int(np.count_nonzero(lesion))}
    save_preprocessed_case(folder, replace(case, properties=properties, lesion=lesion))
    return lesion


def _builder(folder: Path, oversample: float) -> BatchBuilder:
    cases = CaseCollection(folder, ["case_000", "case_001", "case_002", "case_003"])
    sampler = PairSampler(cases.case_modalities(), case_prompts=cases.case_prompts())
    return BatchBuilder(cases, sampler, (4, 16, 16), 8, True, seed=3, lesion_oversample=oversample)


def test_patches_are_centred_on_lesions_as_often_as_the_plans_say(tmp_path: Path) -> None:
    folder, plans = write_training_dataset(tmp_path, num_cases=4)
    data_folder = folder / plans.configuration().data_identifier
    plain = tmp_path / "plain"
    shutil.copytree(data_folder, plain)
    _add_lesion(data_folder, "case_001")
    # always: every patch is from the lesion case and has a lesion voxel at its centre
    batch = _builder(data_folder, 1.0).make_batch(0)
    assert batch["case_ids"] == ["case_001"] * 8
    assert batch["lesion"][:, 0, 2, 8, 8].all()
    # off: exactly the batches of the same data without lesion masks (no extra random draw), plus the lesion patch
    off, without = _builder(data_folder, 0.0).make_batch(5), _builder(plain, 0.0).make_batch(5)
    assert "lesion" not in without and off["case_ids"] == without["case_ids"]
    for key in ("source", "target", "mask", "head"):
        assert np.array_equal(off[key], without[key]), key
    # a third: about a third of the patches hold the lesion, against the few a uniform placement gives
    def share(builder: BatchBuilder) -> float:
        return float(np.mean([builder.make_batch(i)["lesion"].reshape(8, -1).any(axis=1).mean() for i in range(40)]))

    oversampled, uniform = share(_builder(data_folder, 0.33)), share(_builder(data_folder, 0.0))
    assert 0.3 < oversampled and oversampled > uniform + 0.2, (oversampled, uniform)


def test_lesion_weight_scales_the_loss_inside_lesions(unisyn_dirs: dict[str, Path]) -> None:
    training = TrainingPlan(num_epochs=1, iterations_per_epoch=1, validation_iterations=1, lesion_oversample=1.0,
                            lesion_weight=4.0)
    folder, plans = write_training_dataset(unisyn_dirs["preprocessed"], num_cases=5, plans=tiny_plans(training=training))
    write_text_encoder(unisyn_dirs["results"], plans)
    data_folder = folder / plans.configuration().data_identifier
    for case_id in ("case_000", "case_001", "case_002", "case_003", "case_004"):
        _add_lesion(data_folder, case_id)
    trainer = make_trainer(GFMTrainer, unisyn_dirs)
    trainer.initialize()
    loader, _ = trainer.build_dataloaders()
    batch = next(iter(loader))
    b = trainer.batch_to_device(batch)
    lesion = torch.from_numpy(batch["lesion"][:, 0]).bool()
    assert lesion.any() and (~lesion).any()
    brain = b["mask"].float()
    region = torch.where(lesion, 4.0, 1.0) * (brain + trainer.background_weight * (1 - brain))
    mri_target = [i for i, d in enumerate(batch["target_descriptions"]) if d.modality != "CT"]
    assert mri_target
    for i in mri_target:
        assert torch.allclose(b["weight"][i], region[i])
    trainer.run()  # a whole (one-iteration) training with both lesion settings on, and its final validation
    assert (trainer.fold_folder / "checkpoint_final.pth").is_file()
    assert "lesion_gap_db" in (trainer.fold_folder / "validation" / "summary.json").read_text()


def test_lesion_psnr_reports_the_gap_and_means_cover_lesion_cases_only() -> None:
    from unisyn_v2.training.validation import _mean, evaluate_in_mask

    rng = np.random.default_rng(0)
    reference = rng.uniform(0.2, 1.0, (10, 12, 12))
    brain = np.zeros(reference.shape, bool)
    brain[1:9, 2:10, 2:10] = True
    lesion = np.zeros(reference.shape, np.uint8)
    lesion[4:6, 5:7, 5:7] = 4
    prediction = reference + 0.01 * rng.normal(size=reference.shape)
    prediction[lesion > 0] += 0.3  # the model misses the lesion
    with_lesion = evaluate_in_mask(reference, prediction, brain, lesion=lesion)
    assert with_lesion["lesion_gap_db"] > 20 and with_lesion["normal_psnr"] > with_lesion["lesion_psnr"]
    healthy = evaluate_in_mask(reference, reference + 0.01, brain, lesion=np.zeros_like(lesion))
    assert "lesion_psnr" not in healthy and "lesion_psnr" not in evaluate_in_mask(reference, prediction, brain)
    means = _mean([healthy, with_lesion])
    assert means["lesion_psnr"] == pytest.approx(with_lesion["lesion_psnr"])  # over the case with lesions
    assert means["psnr"] == pytest.approx((healthy["psnr"] + with_lesion["psnr"]) / 2)


def test_unisyn_evaluate_reports_lesion_psnr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unisyn_v2.cli.evaluate import main as evaluate_main

    rng = np.random.default_rng(1)
    for name in ("ref", "pred", "brain", "lesions"):
        (tmp_path / name).mkdir()
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in GEOMETRY.shape_zyx], indexing="ij")
    brain = ((zz**2 + yy**2 + xx**2) < 0.7).astype(np.uint8)
    for case_id, labels in (("a", _labels()), ("b", np.zeros(GEOMETRY.shape_zyx, np.uint8))):
        reference = np.where(brain, 500 + 300 * rng.random(brain.shape), 0).astype(np.float32)
        prediction = reference + np.where(labels > 0, 300.0, 5.0).astype(np.float32) * brain
        write_image(tmp_path / "ref" / f"{case_id}.nii.gz", reference, GEOMETRY)
        write_image(tmp_path / "pred" / f"{case_id}.nii.gz", prediction, GEOMETRY)
        write_image(tmp_path / "brain" / f"{case_id}.nii.gz", brain, GEOMETRY, dtype=np.uint8)
        write_image(tmp_path / "lesions" / f"{case_id}.nii.gz", labels, GEOMETRY, dtype=np.uint8)
    args = ["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--mask", str(tmp_path / "brain"),
            "--lesion_mask", str(tmp_path / "lesions"), "--modality", "T1w", "--protocol", "reference"]
    assert evaluate_main(args) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    by_case = {c["case"]: c for c in summary["per_case"]}
    assert by_case["a"]["lesion_gap_db"] > 20 and "lesion_psnr" not in by_case["b"]  # b has no lesions
    assert summary["mean"]["lesion_psnr"] == pytest.approx(by_case["a"]["lesion_psnr"])
    assert "lesion PSNR" in capsys.readouterr().out and "lesion_gap_db" in (tmp_path / "pred" / "summary.csv").read_text()
