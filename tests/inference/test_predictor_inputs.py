"""Input discovery, case grouping, target parsing and the source choice rule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from unisyn_v2.inference.inputs import (
    DescriptionSpec, InputCase, InputError, InputImage, choose_source, discover_cases, parse_description_spec,
)
from unisyn_v2.inference.predictor import PredictionSettings, UniSynPredictor
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.modalities import UnknownModalityError
from unisyn_v2.metadata.prompts import ImageDescription, build_prompt

from predictor_fixtures import IdentityNetwork, conditioner, make_plans, write_case_image

PET_PROMPT = build_prompt("FDG-PET", ImageMetadata(tracer="FDG", unit="SUV", injected_dose=300.0, uptake_time=60.0),
                          SubjectMetadata(age=70.0, sex="F"))


def _predictor(trainer_info: dict | None = None) -> UniSynPredictor:
    plans = make_plans()
    return UniSynPredictor([IdentityNetwork()], conditioner(plans), plans, "3d", trainer_info, settings=PredictionSettings(progress=False))


def test_target_bare_name_prompt_and_json(tmp_path: Path) -> None:
    assert parse_description_spec("fdg-pet") == DescriptionSpec("FDG-PET")
    spec = parse_description_spec(PET_PROMPT)
    assert spec.kind == "prompt" and spec.metadata.injected_dose == 300.0 and spec.subject.age == 70.0
    path = tmp_path / "target.json"
    path.write_text(json.dumps({"modality": "FDG-PET", "metadata": {"injected_dose": 180.0}}))
    spec = parse_description_spec(path)
    assert spec.kind == "json" and spec.subject is None and spec.metadata.injected_dose == 180.0
    (tmp_path / "p.json").write_text(json.dumps({"prompt": PET_PROMPT}))
    assert parse_description_spec(tmp_path / "p.json").metadata.uptake_time == 60.0
    with pytest.raises(UnknownModalityError, match="known modalities: T1w"):
        parse_description_spec("PETCT")
    with pytest.raises(InputError, match="does not exist"):
        parse_description_spec(tmp_path / "missing.json")


def test_target_description_fills_typical_subject_and_voxel_size(tmp_path: Path) -> None:
    typical = {"FDG-PET": {"tracer": "FDG", "unit": "SUV", "injected_dose": 250.0, "uptake_time": 45.0, "voxel_size": [2.0, 2.0, 2.5]},
               "T1w": {"repetition_time": 2300.0, "voxel_size": [2.0, 2.0, 2.5]}}
    predictor = _predictor({"typical_metadata": typical})
    bare = predictor.describe_source(InputImage(Path("x_T1w.nii.gz"), ImageDescription("T1w"), metadata_given=False))
    assert bare.metadata.repetition_time == 2300.0 and bare.metadata.voxel_size is None  # the header fills it later
    source = ImageDescription("T1w", ImageMetadata(voxel_size=(1.0, 1.0, 2.0)), SubjectMetadata(age=64.0, sex="M"))
    target = predictor.target_description(predictor.resolve_target("FDG-PET"), source)
    assert target.metadata.injected_dose == 250.0 and target.metadata.tracer == "FDG"
    assert target.metadata.voxel_size == (1.0, 1.0, 2.0) and target.subject == source.subject
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"modality": "FDG-PET", "metadata": {"injected_dose": 180.0}}))
    target = predictor.target_description(predictor.resolve_target(path), source)
    assert target.metadata.injected_dose == 180.0 and target.metadata.uptake_time == 45.0  # given wins, typical fills
    assert target.metadata.voxel_size == (1.0, 1.0, 2.0)  # the output grid's, not the typical one
    target = predictor.target_description(predictor.resolve_target(PET_PROMPT), source)
    assert target.subject.age == 70.0 and target.metadata.injected_dose == 300.0 and target.prompt().startswith("Age: 70.0")


def test_unseen_and_unplanned_targets(caplog: pytest.LogCaptureFixture) -> None:
    predictor = _predictor({"modalities": ["T1w", "CT"]})
    with caplog.at_level(logging.WARNING):
        predictor.resolve_target("FDG-PET")
    assert "never seen in training" in caplog.text
    with pytest.raises(InputError, match="no normalisation"):
        predictor.resolve_target("AV45-PET")
    with pytest.raises(InputError, match="one-hot model has no code"):
        predictor.resolve_target("T2w")


def _touch(path: Path, value: float = 100.0) -> Path:
    array = np.zeros((6, 8, 8), np.float32)
    array[1:5, 2:6, 2:6] = value
    write_case_image(path, array)
    return path


def test_case_grouping_sidecars_and_masks(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _touch(folder / "sub-01_T1w.nii.gz")
    _touch(folder / "sub-01_ct.nii.gz")
    _touch(folder / "sub-01_brainmask.nii.gz", 1.0)
    _touch(folder / "sub-02_T1w.nii.gz")
    (folder / "sub-02_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.0023, "MagneticFieldStrength": 3}))
    with pytest.raises(InputError, match="cannot tell its modality"):
        discover_cases([folder, _touch(tmp_path / "patient_001.nii.gz")])
    cases = {c.case_id: c for c in discover_cases([folder, tmp_path / "patient_001.nii.gz"], parse_description_spec(PET_PROMPT))}
    assert sorted(cases) == ["patient_001", "sub-01", "sub-02"]
    assert [i.description.modality for i in cases["sub-01"].images] == ["T1w", "CT"]
    assert cases["sub-01"].brain_mask is not None and cases["sub-01"].brain_mask.name == "sub-01_brainmask.nii.gz"
    sub2 = cases["sub-02"].images[0]
    assert sub2.metadata_given and sub2.description.metadata.repetition_time == pytest.approx(2300.0)
    assert not cases["sub-01"].images[0].metadata_given
    patient = cases["patient_001"].images[0]
    assert patient.description.modality == "FDG-PET" and patient.description.metadata.injected_dose == 300.0
    assert patient.description.subject.age == 70.0


def test_dataset_json_folder_and_generated_files_skipped(tmp_path: Path) -> None:
    from raw_fixtures import write_blob_dataset

    root = write_blob_dataset(tmp_path / "raw", num_cases=2, shape=(8, 10, 10))
    cases = discover_cases([root])
    assert [c.case_id for c in cases] == ["case_000", "case_001"]
    assert cases[0].images[0].description.subject.age == 40.0 and cases[0].brain_mask is not None
    out = tmp_path / "loose"
    _touch(out / "a_T1w.nii.gz")
    _touch(out / "a_CT.nii.gz")
    (out / "a_CT.json").write_text(json.dumps({"GeneratedBy": [{"Name": "unisyn_v2"}]}))
    [case] = discover_cases([out])
    assert [i.description.modality for i in case.images] == ["T1w"]


def _case(*modalities: str) -> InputCase:
    return InputCase("c", tuple(InputImage(Path(f"/x/c_{m}.nii.gz"), ImageDescription(m)) for m in modalities))


def test_source_choice_rule() -> None:
    pick = lambda case, target, **kw: choose_source(case, target, **kw).description.modality  # noqa: E731
    assert pick(_case("CT", "T2w", "T1w"), "FDG-PET") == "T1w"  # no family match: T1w first
    assert pick(_case("CT", "FLAIR", "T1w"), "T2w") == "T1w"  # same family, T1w among them
    assert pick(_case("CT", "FLAIR"), "T2w") == "FLAIR"  # same family beats T1w-less rest
    assert pick(_case("T2w", "FLAIR"), "CT") == "T2w"  # file order last
    assert pick(_case("T1w", "CT"), "CT") == "T1w"  # the target's own modality is not a source
    assert pick(_case("CT"), "CT") == "CT"  # ... unless nothing else is left
    assert pick(_case("T1w", "CT"), "FDG-PET", tasks={("CT", "FDG-PET")}) == "CT"  # trained task first
    assert pick(_case("T2w", "CT"), "FDG-PET", trained_modalities={"CT"}) == "CT"
    assert pick(_case("T1w", "CT"), "FDG-PET", source_image="/elsewhere/c_CT.nii.gz") == "CT"
    with pytest.raises(InputError, match="not among its images"):
        choose_source(_case("T1w"), "CT", source_image="other.nii.gz")
