"""Tests for the metadata-prompt tokenizer: round trips, digits, context limit, determinism, save/load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.modalities import known_modalities
from unisyn_v2.metadata.prompts import build_prompt
from unisyn_v2.metadata.tokenizer import DEFAULT_CONTEXT_LENGTH, MetadataTokenizer


def _random_prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        modality = str(rng.choice(known_modalities()))

        def maybe(value: float) -> float | None:
            return None if rng.random() < 0.2 else value

        meta = ImageMetadata(
            field_strength=maybe(float(rng.choice([0.5, 1.5, 3.0, 7.0]))),
            manufacturer=None if rng.random() < 0.2 else str(rng.choice(["Siemens", "GE", "Philips", "Bruker-X", "Über"])),
            voxel_size=None if rng.random() < 0.2 else tuple(float(v) for v in rng.uniform(0.4, 5.0, 3)),
            repetition_time=maybe(float(rng.uniform(5, 12000))), echo_time=maybe(float(rng.uniform(1, 200))),
            inversion_time=maybe(float(rng.uniform(100, 3000))), flip_angle=maybe(float(rng.uniform(5, 180))),
            kvp=maybe(float(rng.choice([80.0, 100.0, 120.0, 140.0]))),
            reconstruction_kernel=None if rng.random() < 0.5 else str(rng.choice(["Br40f", "FC43", "B30s"])),
            injected_dose=maybe(float(rng.uniform(100, 400))), uptake_time=maybe(float(rng.uniform(10, 90))),
            unit=None if rng.random() < 0.3 else str(rng.choice(["SUV", "Bq/ml", "SUVR"])),
        )
        subject = SubjectMetadata(age=maybe(float(rng.uniform(0, 100))), sex=None if rng.random() < 0.2 else str(rng.choice(["M", "F"])))
        prompts.append(build_prompt(modality, meta, subject))
    return prompts


def test_round_trip_of_many_prompts_including_ct_pet_and_none() -> None:
    tokenizer = MetadataTokenizer.default()
    prompts = _random_prompts(300)
    prompts.append(build_prompt("CT", ImageMetadata(), SubjectMetadata()))
    prompts.append(build_prompt("FDG-PET", ImageMetadata(unit="SUV", injected_dose=250.0, uptake_time=45.0), SubjectMetadata(71.0, "F")))
    families = {p.split("Modality: ")[1].split(";")[0] for p in prompts}
    assert {"CT", "FDG-PET", "T1w"} <= families
    assert any("None" in p for p in prompts)
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        assert ids[0] == tokenizer.sot_id and ids[-1] == tokenizer.eot_id
        assert tokenizer.decode(ids) == prompt
        assert len(ids) <= DEFAULT_CONTEXT_LENGTH


@pytest.mark.parametrize("mode", ["digits", "magnitude", "place"])
def test_round_trip_in_every_number_mode(mode: str) -> None:
    tokenizer = MetadataTokenizer.default(number_mode=mode)
    for prompt in _random_prompts(100, seed=5):
        assert tokenizer.decode(tokenizer.encode(prompt)) == prompt
    assert tokenizer.decode(tokenizer.encode("x1.5 1e-05 12345678901234.5678 Br40f")) == "x1.5 1e-05 12345678901234.5678 Br40f"
    assert tokenizer.tokenize("90.0") != tokenizer.tokenize("10.0")


def test_number_aware_modes_mark_the_magnitude() -> None:
    magnitude = MetadataTokenizer.default(number_mode="magnitude")
    assert magnitude.token_strings("TE 100.0") == ["TE", " ", "<e2>", "1", "0", "0", ".", "0"]
    place = MetadataTokenizer.default(number_mode="place")
    assert place.token_strings("100.5") == ["1e2", "0e1", "0e0", ".", "5e-1"]
    assert place.tokenize("90")[0] != place.tokenize("900")[0]
    with pytest.raises(ValueError, match="number_mode"):
        MetadataTokenizer.default(number_mode="bpe")


def test_round_trip_of_arbitrary_text_through_byte_fallback() -> None:
    tokenizer = MetadataTokenizer.default()
    for text in ["", "Modality: T1w", "Scanner: 3.0 United Imaging", "héllo\tWörld\n", "1e-05 -3.25", "AV45x AV45-PET"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_template_words_and_modalities_are_single_tokens() -> None:
    tokenizer = MetadataTokenizer.default()
    assert tokenizer.token_strings("Modality: FDG-PET") == ["Modality", ":", " ", "FDG-PET"]
    assert tokenizer.token_strings("TR(ms)") == ["TR", "(", "ms", ")"]
    assert len(tokenizer.tokenize("AV45x")) == 5  # no word match inside a longer word


def test_numbers_are_kept_digit_by_digit_and_distinguishable() -> None:
    tokenizer = MetadataTokenizer.default()
    meta = dict(field_strength=3.0, repetition_time=2300.0, echo_time=90.0, flip_angle=90.0)
    a = tokenizer.encode(build_prompt("T2w", ImageMetadata(**meta)))
    b = tokenizer.encode(build_prompt("T2w", ImageMetadata(**{**meta, "repetition_time": 4000.0})))
    assert a != b and len(a) == len(b)
    assert sum(x != y for x, y in zip(a, b)) == 2  # "23" vs "40": only the differing digits change
    assert tokenizer.token_strings("2300.5") == ["2", "3", "0", "0", ".", "5"]
    digit_ids = [tokenizer.tokenize(str(d))[0] for d in range(10)]
    assert len(set(digit_ids)) == 10
    assert tokenizer.tokenize(".")[0] not in digit_ids and tokenizer.tokenize("-")[0] not in digit_ids
    assert tokenizer.tokenize("1.5") != tokenizer.tokenize("15")


def test_too_long_prompt_is_an_error_naming_the_length() -> None:
    tokenizer = MetadataTokenizer.default(context_length=40)
    prompt = build_prompt("T1w", ImageMetadata(repetition_time=2300.0))
    n = len(tokenizer.tokenize(prompt)) + 2
    with pytest.raises(ValueError, match=f"needs {n} tokens.*context of 40"):
        tokenizer.encode(prompt)
    with pytest.raises(ValueError, match="needs"):
        tokenizer.encode_batch([prompt])
    with pytest.raises(ValueError, match="needs"):
        MetadataTokenizer.default().encode("x" * 300)


def test_encode_batch_pads_with_pad_id_to_the_context() -> None:
    tokenizer = MetadataTokenizer.default()
    prompts = _random_prompts(4, seed=1)
    batch = tokenizer.encode_batch(prompts)
    assert batch.dtype == torch.long and batch.shape == (4, 224)
    for row, prompt in zip(batch, prompts):
        ids = tokenizer.encode(prompt)
        assert row[: len(ids)].tolist() == ids
        assert (row[len(ids):] == tokenizer.pad_id).all()
        assert int((row == tokenizer.eot_id).sum()) == 1
    assert tokenizer.encode_batch(prompts, length=150).shape == (4, 150)
    assert tokenizer.pad_id == 0 and tokenizer.vocab_size > max(int(batch.max()), 258)


def test_ids_are_deterministic_and_survive_save_load(tmp_path: Path) -> None:
    prompts = _random_prompts(20, seed=2)
    first, second = MetadataTokenizer.default(), MetadataTokenizer.default()
    assert [first.encode(p) for p in prompts] == [second.encode(p) for p in prompts]
    custom = MetadataTokenizer.default(extra_words=["Br40f", "FC43"], context_length=200, number_mode="place")
    path = custom.save(tmp_path / "tokenizer.json")
    loaded = MetadataTokenizer.load(path)
    assert loaded == custom and loaded.context_length == 200 and loaded.vocab_size == custom.vocab_size
    assert loaded.number_mode == "place"
    assert [loaded.encode(p) for p in prompts] == [custom.encode(p) for p in prompts]
    assert loaded.token_strings("Br40f") == ["Br40f"]


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a unisyn_v2.MetadataTokenizer"):
        MetadataTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MetadataTokenizer.default().decode([10_000])
