"""Modality vocabulary, metadata parsing, prompts (lossless round trip) and BIDS sidecars."""

from __future__ import annotations

import json

import pytest

from unisyn_v2.metadata.bids import metadata_from_bids, read_sidecar, sidecar_path
from unisyn_v2.metadata.classes import metadata_class_key
from unisyn_v2.metadata.fields import ImageMetadata, MetadataError, SubjectMetadata
from unisyn_v2.metadata.modalities import Modality, ModalityFamily, UnknownModalityError, get_modality, known_modalities, register_modality
from unisyn_v2.metadata.prompts import ImageDescription, PromptError, parse_prompt

PROMPTS = [
    ImageDescription("T2w", ImageMetadata(field_strength=3.0, manufacturer="Siemens", voxel_size=(1.0, 1.0, 1.0),
                                          repetition_time=4000.0, echo_time=90.0, flip_angle=90.0), SubjectMetadata(71.0, "F")),
    ImageDescription("FLAIR", ImageMetadata(field_strength=1.5, manufacturer="GE", repetition_time=9000.0, echo_time=120.5,
                                            inversion_time=2500.0, flip_angle=150.0), SubjectMetadata(9.1, "M")),
    ImageDescription("CT", ImageMetadata(kvp=120.0, reconstruction_kernel="H30s", voxel_size=(0.5, 0.5, 2.0)), SubjectMetadata(55.0, None)),
    ImageDescription("FDG-PET", ImageMetadata(tracer="FDG", unit="SUV", injected_dose=250.0, uptake_time=45.0)),
    ImageDescription("AV45-PET", ImageMetadata(manufacturer="Philips", unit="SUVR")),
    ImageDescription("T1w", ImageMetadata()),
]


def test_paper_prompt_format() -> None:
    assert PROMPTS[0].prompt() == (
        "Age: 71.0; Gender: F; Scanner: 3.0 Siemens; Modality: T2w; Voxel size: (1.0, 1.0, 1.0); "
        "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (4000.0, 90.0, None, 90.0)"
    )


@pytest.mark.parametrize("description", PROMPTS, ids=lambda d: d.modality)
def test_prompt_round_trips(description: ImageDescription) -> None:
    prompt = description.prompt()
    parsed = parse_prompt(prompt)
    assert parsed.prompt() == prompt
    assert parsed.modality == description.modality
    assert parsed.metadata.echo_time == description.metadata.echo_time


def test_pet_prompt_carries_tracer_from_modality() -> None:
    assert "Tracer: AV45" in PROMPTS[4].prompt()


def test_parse_errors_are_clear() -> None:
    with pytest.raises(PromptError, match="Modality"):
        parse_prompt("Age: 3; Gender: M")
    with pytest.raises(UnknownModalityError, match="known modalities"):
        parse_prompt("Modality: DWI")
    with pytest.raises(PromptError, match="4 values"):
        parse_prompt("Modality: T1w; Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (1, 2)")


def test_unknown_modality_lists_known_and_registration_extends() -> None:
    with pytest.raises(UnknownModalityError) as info:
        get_modality("MRA")
    assert "T1w" in str(info.value) and "FDG-PET" in str(info.value)
    register_modality(Modality("MRA-test", ModalityFamily.MRI))
    assert "MRA-test" in known_modalities()
    assert get_modality("mra-test").family is ModalityFamily.MRI
    with pytest.raises(ValueError, match="already registered"):
        register_modality(Modality("MRA-test", ModalityFamily.MRI))


def test_metadata_types_and_ranges() -> None:
    with pytest.raises(MetadataError, match="metadata.echo_time: must be a number"):
        ImageMetadata.from_dict({"echo_time": "90"})
    with pytest.raises(MetadataError, match="unknown field"):
        ImageMetadata.from_dict({"TE": 90})
    problems = ImageMetadata(repetition_time=50.0, echo_time=90.0, flip_angle=200.0).problems()
    assert any("shorter than repetition_time" in p for p in problems)
    assert any(p.startswith("flip_angle") for p in problems)
    assert SubjectMetadata(age=130).problems()
    assert SubjectMetadata.from_dict({"sex": "female"}).sex == "F"


def test_bids_sidecar_converts_seconds(tmp_path) -> None:
    image = tmp_path / "sub-01_T2w.nii.gz"
    assert sidecar_path(image).name == "sub-01_T2w.json"
    sidecar_path(image).write_text(json.dumps({"RepetitionTime": 4.0, "EchoTime": 0.09, "InversionTime": None,
                                               "FlipAngle": 90, "MagneticFieldStrength": 3, "Manufacturer": "Siemens"}))
    metadata = read_sidecar(image)
    assert metadata.repetition_time == pytest.approx(4000.0)
    assert metadata.echo_time == pytest.approx(90.0)
    assert metadata.manufacturer == "Siemens"
    assert read_sidecar(tmp_path / "other.nii.gz") is None


def test_bids_sidecar_in_milliseconds_is_caught() -> None:
    with pytest.raises(MetadataError, match="seconds"):
        metadata_from_bids({"RepetitionTime": 2300})


def test_metadata_classes_band_parameters() -> None:
    short = ImageDescription("T2w", ImageMetadata(field_strength=3.0, echo_time=10.0))
    long = ImageDescription("T2w", ImageMetadata(field_strength=3.0, echo_time=100.0))
    assert metadata_class_key(short) != metadata_class_key(long)
    assert metadata_class_key(PROMPTS[3]) == "FDG-PET|SUV"


SECONDS_CHECK = [  # (metadata, modality, fields reported as seconds)
    (dict(repetition_time=2.3, echo_time=0.0023, inversion_time=0.9), "T1w", {"repetition_time", "echo_time", "inversion_time"}),
    (dict(repetition_time=4.0, echo_time=90.0), "T2w", {"repetition_time"}),  # TE >= TR, and spin-echo TR
    (dict(repetition_time=9.0), "FLAIR", {"repetition_time"}),
    (dict(echo_time=0.09), "T2w", {"echo_time"}),
    (dict(repetition_time=2300.0, echo_time=2.3, inversion_time=900.0, flip_angle=8.0), "T1w", set()),  # MPRAGE
    (dict(repetition_time=20.0, echo_time=5.0, flip_angle=25.0), "T1w", set()),  # spoiled GRE
    (dict(repetition_time=4.5, echo_time=2.2, flip_angle=50.0), "T1w", set()),  # bSSFP
    (dict(repetition_time=27.0, echo_time=20.0, flip_angle=15.0), "SWI", set()),
    (dict(repetition_time=9000.0, echo_time=120.0, inversion_time=2500.0), "FLAIR", set()),
]


@pytest.mark.parametrize("values, modality, expected", SECONDS_CHECK)
def test_times_that_look_like_seconds_are_reported_with_the_value_in_ms(values, modality, expected) -> None:
    problems = ImageMetadata(**values).field_problems(modality)
    flagged = {name for name, message in problems if "looks like seconds" in message}
    assert flagged == expected, problems
    for name, message in problems:
        if name in expected:
            assert f"write {values[name] * 1000:g}" in message
    if not expected:
        assert problems == []


def test_bids_sidecar_rejects_nan_and_duplicated_keys(tmp_path) -> None:
    image = tmp_path / "sub-01_T1w.nii.gz"
    sidecar_path(image).write_text('{"EchoTime": NaN}')
    with pytest.raises(MetadataError, match="EchoTime: must be finite"):
        read_sidecar(image)
    sidecar_path(image).write_text('{"EchoTime": 0.003, "EchoTime": 0.03}')
    with pytest.raises(MetadataError, match="unreadable BIDS sidecar .key 'EchoTime' appears twice"):
        read_sidecar(image)
