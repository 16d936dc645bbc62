"""Numbers in prompts by value (issue 16): the code is monotone in each parameter, units are canonical,
the text encoder carries it, and the artifact round-trips it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.prompts import build_prompt
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.metadata.value_code import (
    VALUE_FIELDS, encode_value, mask_numbers, prompt_value_code, value_code_size,
)
from unisyn_v2.networks.text_artifact import load_text_encoder_artifact, save_text_encoder_artifact
from unisyn_v2.networks.text_encoder import MetadataTextEncoder

SUBJECT = SubjectMetadata(age=70.0, sex="F")


def _prompt(modality: str, **fields: float) -> str:
    metadata = ImageMetadata(field_strength=3.0, manufacturer="Siemens", voxel_size=(1.0, 1.0, 1.0), **fields)
    return build_prompt(modality, metadata, SUBJECT)


SWEEPS = {  # (modality, fixed fields, swept field, values in increasing order)
    "T2w TE": ("T2w", {"repetition_time": 4000.0, "flip_angle": 90.0}, "echo_time", [30, 40, 70, 100, 130, 160, 200, 250]),
    "T2w TR": ("T2w", {"echo_time": 100.0, "flip_angle": 90.0}, "repetition_time", [1500, 2500, 4000, 6000, 8000]),
    "FLAIR TI": ("FLAIR", {"repetition_time": 9000.0, "echo_time": 100.0, "flip_angle": 90.0}, "inversion_time",
                 [1500, 1900, 2300, 2500, 2800, 3300]),
    "T1w TI": ("T1w", {"repetition_time": 2300.0, "echo_time": 2.5, "flip_angle": 9.0}, "inversion_time",
               [400, 600, 900, 1100, 1400]),
    "GRE flip": ("T1w", {"repetition_time": 20.0, "echo_time": 4.0}, "flip_angle", [5, 10, 20, 30, 40]),
}


def _encoder(tokenizer: MetadataTokenizer, seed: int = 0) -> MetadataTextEncoder:
    torch.manual_seed(seed)
    return MetadataTextEncoder(tokenizer.vocab_size, tokenizer.context_length, width=16, layers=1, heads=2, embed_dim=16,
                               pad_token_id=tokenizer.pad_id, eot_token_id=tokenizer.eot_id,
                               value_encoding={"tokenizer": tokenizer.to_dict(), "weight": 0.5})


def _check_monotone(embeddings: torch.Tensor) -> None:
    """From every anchor, distances grow (and cosines fall) strictly as the other value moves away."""
    distance = torch.cdist(embeddings.double(), embeddings.double())
    cosine = F.normalize(embeddings.double(), dim=-1) @ F.normalize(embeddings.double(), dim=-1).t()
    n = len(embeddings)
    for anchor in range(n):
        for step in (1, -1):
            others = list(range(anchor + step, n if step > 0 else -1, step))
            d = [float(distance[anchor, j]) for j in others]
            c = [float(cosine[anchor, j]) for j in others]
            assert all(b > a for a, b in zip(d, d[1:])), (anchor, d)
            assert all(b < a for a, b in zip(c, c[1:])), (anchor, c)


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_text_embedding_distance_grows_with_the_parameter_difference(sweep: str) -> None:
    modality, fixed, name, values = SWEEPS[sweep]
    tokenizer = MetadataTokenizer.default()
    encoder = _encoder(tokenizer).eval()
    prompts = [_prompt(modality, **fixed, **{name: float(v)}) for v in values]
    with torch.no_grad():
        embeddings = encoder(tokenizer.encode_batch(prompts))
    assert embeddings.shape == (len(values), 16 + value_code_size())
    _check_monotone(embeddings)


def test_the_monotone_property_does_not_depend_on_the_weights() -> None:
    """Any weights (a trained encoder included) keep it: the value code has no parameters."""
    modality, fixed, name, values = SWEEPS["T2w TE"]
    tokenizer = MetadataTokenizer.default()
    encoder = _encoder(tokenizer, seed=3)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter))
        embeddings = encoder(tokenizer.encode_batch([_prompt(modality, **fixed, **{name: float(v)}) for v in values]))
    _check_monotone(embeddings)


def test_digit_strings_no_longer_decide_similarity() -> None:
    """TE 160 vs 200 against TE 100: the further value is further (digit strings had it backwards)."""
    tokenizer = MetadataTokenizer.default()
    encoder = _encoder(tokenizer)
    fixed = {"repetition_time": 4000.0, "flip_angle": 90.0}
    with torch.no_grad():
        e = F.normalize(encoder(tokenizer.encode_batch([_prompt("T2w", **fixed, echo_time=t) for t in (100.0, 160.0, 200.0)])), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])


def test_numbers_are_masked_but_words_with_digits_survive() -> None:
    prompt = build_prompt("AV45-PET", ImageMetadata(field_strength=3.0, manufacturer="GE", tracer="AV45", unit="SUVR",
                                                   injected_dose=370.0, uptake_time=50.0), SUBJECT)
    masked = mask_numbers(prompt)
    assert "AV45-PET" in masked and "AV45" in masked
    assert "370" not in masked and "50.0" not in masked and "70.0" not in masked
    assert mask_numbers("Modality: T1w; Scanner: 1.5 GE") == "Modality: T1w; Scanner: # GE"


def test_units_are_canonical_and_log_scaled_fields_are_scale_free() -> None:
    """Equal ratios of a log field are equal steps: TE 20 -> 40 moves the code as much as 50 -> 100."""
    te = next(f for f in VALUE_FIELDS if f.name == "echo_time")
    assert te.unit == "ms" and te.log
    a, b, c, d = (encode_value(te, v) for v in (20.0, 40.0, 50.0, 100.0))
    assert np.linalg.norm(a - b) == pytest.approx(np.linalg.norm(c - d), rel=0.05)
    assert np.linalg.norm(encode_value(te, 100.0)) == pytest.approx(np.sqrt(encode_value(te, 100.0).size / 2))
    assert not encode_value(te, None).any()


def test_missing_and_unparseable_values_code_as_zeros() -> None:
    assert not prompt_value_code("not a structured prompt").any()
    code = prompt_value_code(_prompt("T2w", repetition_time=4000.0, echo_time=100.0))
    per_field = code.reshape(len(VALUE_FIELDS), -1)
    present = {f.name for f, row in zip(VALUE_FIELDS, per_field) if row.any()}
    assert present == {"age", "field_strength", "voxel_size", "repetition_time", "echo_time"}


def test_artifact_round_trip_keeps_the_value_encoding(tmp_path: Path) -> None:
    tokenizer = MetadataTokenizer.default()
    encoder = _encoder(tokenizer)
    save_text_encoder_artifact(tmp_path / "te", tokenizer, encoder)
    loaded_tokenizer, frozen = load_text_encoder_artifact(tmp_path / "te")
    prompts = [_prompt("T2w", repetition_time=4000.0, echo_time=t) for t in (40.0, 200.0)]
    with torch.no_grad():
        expected = F.normalize(encoder.eval()(tokenizer.encode_batch(prompts)), dim=-1)
        got = frozen(loaded_tokenizer.encode_batch(prompts))
    assert frozen.embed_dim == 16 + value_code_size()
    torch.testing.assert_close(got, expected)


def test_meta_device_gives_the_output_shape() -> None:
    tokenizer = MetadataTokenizer.default()
    with torch.device("meta"):
        encoder = _encoder(tokenizer)
        out = encoder(torch.ones(2, 32, dtype=torch.long))
    assert out.shape == (2, encoder.output_dim)


def test_typical_protocol_is_a_real_protocol_of_the_usual_sequence() -> None:
    from unisyn_v2.metadata.typical import typical_protocol

    mprage = [{"repetition_time": 2300.0, "echo_time": 2.5, "inversion_time": ti, "flip_angle": 9.0, "manufacturer": "GE"}
              for ti in (500.0, 800.0, 900.0, 1000.0, 1400.0)]
    gre = [{"repetition_time": 20.0, "echo_time": 4.0, "flip_angle": fa} for fa in (10.0, 30.0)]
    chosen = typical_protocol(gre + mprage)
    assert chosen == mprage[2]  # the MPRAGE (the usual sequence) nearest the median TI, never a GRE/MPRAGE mix
    assert typical_protocol([{"kvp": 120.0}]) == {"kvp": 120.0}
