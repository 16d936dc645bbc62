"""NeuroCLIP building blocks: class-balanced sampler, contrastive loss, whole-brain volumes, evaluation
helpers and the text-encoder artifact."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.prompts import build_prompt
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.networks.clip_loss import clip_loss
from unisyn_v2.networks.factory import build_text_encoder
from unisyn_v2.networks.text_artifact import (
    FrozenTextEncoder, copy_text_encoder_artifact, load_text_encoder_artifact, save_text_encoder_artifact,
    text_encoder_artifact_folder,
)
from unisyn_v2.training.neuroclip_data import (
    ClassBalancedBatchSampler, NeuroCLIPSample, contrastive_loss, crop_or_pad_around, downsample_volume,
    typical_metadata, whole_brain_volume,
)
from unisyn_v2.training.neuroclip_evaluation import (
    image_to_modality_top1, image_to_text_top1, parameter_sensitivity, rank_spearman, text_candidates,
)


# ------------------------------------------------------------------ sampler
def _keys(counts: dict[str, int]) -> list[str]:
    return [key for key, n in counts.items() for _ in range(n)]


def test_sampler_puts_every_class_once_in_each_batch() -> None:
    keys = _keys({"T1w|3T": 5, "T2w|3T": 1, "CT|mid": 3, "FDG-PET|SUV": 7})
    sampler = ClassBalancedBatchSampler(keys, max_batch_classes=32, seed=0)
    seen: Counter[int] = Counter()
    for _ in range(35):
        batch = sampler.next_batch()
        assert sorted(keys[i] for i in batch) == sorted(set(keys))
        seen.update(batch)
    assert set(seen) == set(range(len(keys)))  # every sample gets drawn
    t1 = [i for i, k in enumerate(keys) if k == "T1w|3T"]
    assert max(seen[i] for i in t1) - min(seen[i] for i in t1) <= 1  # cycles through a class evenly


def test_sampler_rotates_classes_when_they_outnumber_the_batch() -> None:
    keys = _keys({f"class{c:02d}": 2 for c in range(11)})
    sampler = ClassBalancedBatchSampler(keys, max_batch_classes=4, seed=3)
    assert sampler.batches_per_round == 3
    for _ in range(4):  # four rounds
        round_classes = []
        for _ in range(sampler.batches_per_round):
            batch = [keys[i] for i in sampler.next_batch()]
            assert 3 <= len(batch) <= 4 and len(set(batch)) == len(batch)
            round_classes += batch
        assert sorted(round_classes) == sorted(set(keys))  # each class once per round


def test_sampler_can_draw_several_distinct_samples_per_class() -> None:
    keys = _keys({"a": 3, "b": 1, "c": 4})
    sampler = ClassBalancedBatchSampler(keys, max_batch_classes=32, seed=0, samples_per_class=2)
    for _ in range(10):
        batch = sampler.next_batch()
        assert len(set(batch)) == len(batch) == 5  # a:2, b:1 (all it has), c:2
        assert Counter(keys[i] for i in batch) == {"a": 2, "b": 1, "c": 2}
    assert ClassBalancedBatchSampler(_keys({f"k{i}": 2 for i in range(6)}), 4, samples_per_class=2).batches_per_round == 3


def test_sampler_state_round_trip_and_errors() -> None:
    keys = _keys({"a": 3, "b": 4, "c": 2})
    sampler = ClassBalancedBatchSampler(keys, 2, seed=1)
    sampler.next_batch()
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(6)]
    clone = ClassBalancedBatchSampler(keys, 2, seed=99)
    clone.load_state_dict(json.loads(json.dumps(state)))
    assert [clone.next_batch() for _ in range(6)] == expected
    with pytest.raises(ValueError, match="at least 2 metadata classes"):
        ClassBalancedBatchSampler(["a", "a"], 4)
    with pytest.raises(ValueError, match="max_batch_classes"):
        ClassBalancedBatchSampler(["a", "b"], 1)


# --------------------------------------------------------------------- loss
def test_contrastive_loss_on_known_inputs() -> None:
    b = 4
    perfect = 100.0 * torch.eye(b)
    assert contrastive_loss(perfect, perfect.t()) < 1e-6
    uniform = torch.zeros(b, b)
    assert math.isclose(float(contrastive_loss(uniform, uniform)), math.log(b), rel_tol=1e-6)
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    e = math.exp
    terms = [math.log(e(2) / (e(2) + e(0))), math.log(e(3) / (e(1) + e(3))),  # image -> text rows
             math.log(e(2) / (e(2) + e(1))), math.log(e(3) / (e(0) + e(3)))]  # text -> image rows
    assert math.isclose(float(contrastive_loss(logits, logits.t(), ["a", "b"])), -sum(terms) / 4, rel_tol=1e-6)
    random = torch.randn(5, 5)
    assert torch.allclose(contrastive_loss(random, random.t(), list("abcde")), clip_loss(random, random.t()))


def test_contrastive_loss_treats_identical_prompts_as_positives() -> None:
    # images 0 and 1 share a prompt: both texts are right for both images, so equal logits cost only log 2
    logits = torch.tensor([[10.0, 10.0, -10.0], [10.0, 10.0, -10.0], [-10.0, -10.0, 10.0]])
    loss = contrastive_loss(logits, logits.t(), ["same", "same", "other"])
    assert math.isclose(float(loss), 2 / 3 * math.log(2), rel_tol=1e-3)
    assert float(clip_loss(logits, logits.t())) > float(loss) - 1e-6


# ---------------------------------------------------------- image handling
def test_downsample_and_centred_crop() -> None:
    volume = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    small = downsample_volume(volume, 2)
    assert small.shape == (2, 2, 2) and math.isclose(small[0, 0, 0], volume[:2, :2, :2].mean())
    assert downsample_volume(np.ones((5, 5, 5)), 2).shape == (3, 3, 3)
    padded = crop_or_pad_around(np.ones((2, 2, 2), np.float32), (1, 1, 1), (4, 4, 4))
    assert padded.shape == (4, 4, 4) and padded.sum() == 8 and padded[1:3, 1:3, 1:3].all()
    data = np.zeros((20, 20, 20), np.float32)
    mask = np.zeros((20, 20, 20), np.uint8)
    data[2:10, 4:12, 6:14] = 1.0
    mask[2:10, 4:12, 6:14] = 1
    data[15:, 15:, 15:] = 5.0  # outside the mask: removed
    out = whole_brain_volume(data, mask, downsample=2, size=(6, 6, 6))
    assert out.shape == (6, 6, 6) and out.max() == 1.0 and out.sum() == 64  # the 4^3 brain, centred
    assert out[1:5, 1:5, 1:5].all()


def _sample(modality: str, prompt: str, meta: dict, key: str | None = None) -> NeuroCLIPSample:
    return NeuroCLIPSample("c", 0, modality, prompt, key or modality, meta, {"age": 50.0, "sex": "F"})


def test_typical_metadata_uses_observed_values() -> None:
    samples = [_sample("T2w", "p", {"field_strength": f, "echo_time": te, "manufacturer": m})
               for f, te, m in [(1.5, 80.0, "GE"), (3.0, 100.0, "GE"), (1.5, 90.0, "Siemens"), (3.0, 120.0, "GE")]]
    typical = typical_metadata(samples)["T2w"]
    assert typical["field_strength"] in (1.5, 3.0) and typical["echo_time"] == 90.0 and typical["manufacturer"] == "GE"


# --------------------------------------------------------------- evaluation
def test_rank_spearman_and_text_candidates() -> None:
    assert rank_spearman([1, 2, 3, 4], [10, 20, 35, 36]) == pytest.approx(1.0)
    assert rank_spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_spearman([1, 2, 3], [1, 1, 1]) == 0.0
    pool = [f"p{i}" for i in range(30)]
    rows = text_candidates(["p3", "p7"], pool, 10, seed=0)
    assert all(len(r) == 10 and len(set(r)) == 10 for r in rows) and rows[0][0] == "p3"
    assert rows == text_candidates(["p3", "p7"], pool, 10, seed=0)


def test_retrieval_metrics_with_an_oracle_embedding() -> None:
    modalities = ["CT", "FDG-PET", "T1w"]
    typical = {"CT": {"kvp": 120.0}, "FDG-PET": {"unit": "SUV"}, "T1w": {"echo_time": 3.0}}
    oracle = {m: torch.nn.functional.one_hot(torch.tensor(i), 8).float() for i, m in enumerate(modalities)}

    def embed(prompts):  # the modality decides the embedding
        return torch.stack([oracle[p.split("Modality: ")[1].split(";")[0]] for p in prompts])

    images = torch.stack([oracle[m] for m in modalities])
    total, per = image_to_modality_top1(images, modalities, [{}] * 3, typical, embed)
    assert total == 1.0 and per == {m: 1.0 for m in modalities}
    prompts = [build_prompt(m, ImageMetadata.from_dict(typical[m])) for m in modalities]
    assert image_to_text_top1(images, [[prompts[i], prompts[(i + 1) % 3]] for i in range(3)], embed) == 1.0
    wrong = torch.stack([oracle[modalities[(i + 1) % 3]] for i in range(3)])
    assert image_to_modality_top1(wrong, modalities, [{}] * 3, typical, embed)[0] == 0.0


def test_parameter_sensitivity_detects_a_monotonic_embedding() -> None:
    def embed(prompts):  # embedding moves along a line with the echo time (and TR)
        out = []
        for p in prompts:
            tr, te = (float(v) for v in p.split("(degree): (")[1].split(",")[:2])
            out.append(torch.tensor([te / 100.0, tr / 5000.0, 1.0]))
        return torch.stack(out)

    result = parameter_sensitivity({"T2w": {"repetition_time": 4000.0, "echo_time": 90.0}}, embed)
    assert result["modality"] == "T2w"
    assert result["te_distance_spearman"] == pytest.approx(1.0) and result["te_pc1_spearman"] == pytest.approx(1.0)
    assert result["tr_pc1_spearman"] == pytest.approx(1.0) and result["te_step_ratio"] == pytest.approx(1.0)
    assert parameter_sensitivity({"CT": {"kvp": 120.0}}, embed) == {}


# ----------------------------------------------------------------- artifact
def _encoder(tokenizer: MetadataTokenizer) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_text_encoder({"vocab_size": tokenizer.vocab_size, "context_length": 224, "width": 16, "layers": 1,
                               "heads": 2, "embed_dim": 12, "pad_token_id": tokenizer.pad_id,
                               "eot_token_id": tokenizer.eot_id})


def test_artifact_save_load_gives_identical_embeddings(tmp_path: Path) -> None:
    tokenizer = MetadataTokenizer.default(extra_words=["Br40f"])
    encoder = _encoder(tokenizer).eval()
    folder = save_text_encoder_artifact(tmp_path / "text_encoder", tokenizer, encoder, {"dataset_name": "Dataset001_X"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json", "weights.pt"]
    loaded_tokenizer, loaded = load_text_encoder_artifact(folder)
    assert loaded_tokenizer == tokenizer and isinstance(loaded, FrozenTextEncoder)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    loaded.train()
    assert not loaded.training  # stays frozen in eval mode
    prompts = [build_prompt("T1w", ImageMetadata(repetition_time=2300.0)), build_prompt("CT", ImageMetadata(kvp=120.0))]
    tokens = tokenizer.encode_batch(prompts)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(encoder(tokens), dim=-1)
        assert torch.allclose(loaded(loaded_tokenizer.encode_batch(prompts)), expected, atol=1e-6)
    config = json.loads((folder / "config.json").read_text())
    assert config["dataset_name"] == "Dataset001_X" and config["embed_dim"] == 12 and config["normalize"] is True
    copy = copy_text_encoder_artifact(folder, tmp_path / "model" / "text_encoder")
    with torch.no_grad():
        assert torch.allclose(load_text_encoder_artifact(copy)[1](tokens), expected, atol=1e-6)
    assert not list(folder.glob(".tmp_*"))


def test_missing_artifact_names_the_command(tmp_path: Path) -> None:
    folder = text_encoder_artifact_folder(tmp_path / "results", "Dataset007_Brains", "UniSynPlans")
    assert folder.parts[-2:] == ("NeuroCLIPTrainer__UniSynPlans__neuroclip", "text_encoder")
    with pytest.raises(FileNotFoundError, match="unisyn_train Dataset007_Brains neuroclip"):
        load_text_encoder_artifact(folder)


def test_artifact_rejects_a_mismatched_tokenizer(tmp_path: Path) -> None:
    tokenizer = MetadataTokenizer.default()
    encoder = _encoder(MetadataTokenizer.default(extra_words=["Extra"]))
    with pytest.raises(ValueError, match="does not match the tokenizer"):
        save_text_encoder_artifact(tmp_path, tokenizer, encoder)
