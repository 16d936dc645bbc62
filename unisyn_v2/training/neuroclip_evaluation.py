"""NeuroCLIP evaluation: zero-shot retrieval as TUMSyn reports it, plus a parameter-sensitivity check.

- ``image_to_text_top1``: each validation image against 10 candidate prompts (its own + 9 other distinct
  prompts drawn from the whole dataset with a fixed seed, so every epoch sees the same candidates);
  chance is 0.1.
- ``image_to_modality_top1``: each image against one prompt per dataset modality. A candidate is the
  modality's *typical* prompt (median numeric / most common text metadata of that modality in the
  training cases) with the image's own subject, so only the modality and its usual protocol differ
  between candidates (a bare prompt full of ``None`` would be a prompt never seen in training); chance is
  1 / number of modalities.
- ``parameter_sensitivity``: embeddings of the typical T2w prompt (or the first MRI modality) as TE
  sweeps 10..150 ms (TR fixed) and as TR sweeps 1000..6000 ms (TE fixed). Reported per sweep: Spearman
  correlation between the parameter and the distance to the first embedding (``*_distance_spearman``,
  1 = the embedding moves steadily away), |Spearman| between the parameter and the projection on the
  sweep's first principal direction (``*_pc1_spearman``, 1 = monotonic along one direction), and the
  largest step divided by the mean step (``*_step_ratio``, 1 = evenly spaced, large = jumps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.metadata.prompts import build_prompt

TE_SWEEP_MS = tuple(float(v) for v in range(10, 151, 10))
TR_SWEEP_MS = tuple(float(v) for v in range(1000, 6001, 500))
NUM_TEXT_CANDIDATES = 10


def rank_spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    def ranks(values: Sequence[float]) -> np.ndarray:
        a = np.asarray(values, dtype=np.float64)
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=np.float64)
        for value in np.unique(a):
            tied = a == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def text_candidates(true_prompts: Sequence[str], pool: Sequence[str], num_candidates: int = NUM_TEXT_CANDIDATES,
                    seed: int = 0) -> list[list[str]]:
    """Per image: its prompt first, then ``num_candidates - 1`` other distinct prompts from ``pool``."""
    distinct = sorted(set(pool))
    rng = np.random.default_rng(seed)
    out = []
    for prompt in true_prompts:
        others = [p for p in distinct if p != prompt]
        k = min(num_candidates - 1, len(others))
        picks = rng.choice(len(others), size=k, replace=False) if k else []
        out.append([prompt, *(others[i] for i in picks)])
    return out


def image_to_text_top1(image_embeddings: torch.Tensor, candidates: Sequence[Sequence[str]],
                       embed_texts: Callable[[Sequence[str]], torch.Tensor]) -> float:
    """Fraction of images whose own prompt (candidate 0) is the most similar candidate."""
    unique = sorted({p for row in candidates for p in row})
    index = {p: i for i, p in enumerate(unique)}
    text = embed_texts(unique)
    hits = 0
    for image, row in zip(image_embeddings, candidates):
        scores = text[[index[p] for p in row]] @ image
        hits += int(int(scores.argmax()) == 0)
    return hits / max(len(candidates), 1)


def image_to_modality_top1(image_embeddings: torch.Tensor, true_modalities: Sequence[str],
                           subjects: Sequence[dict[str, Any]], typical: dict[str, dict[str, Any]],
                           embed_texts: Callable[[Sequence[str]], torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Top-1 over the dataset's modalities (typical prompts with each image's subject); overall and per modality."""
    modalities = sorted(typical)
    rows = [[build_prompt(m, ImageMetadata.from_dict(typical[m]), SubjectMetadata.from_dict(s)) for m in modalities]
            for s in subjects]
    unique = sorted({p for row in rows for p in row})
    index = {p: i for i, p in enumerate(unique)}
    text = embed_texts(unique)
    per_modality: dict[str, list[int]] = {}
    for image, row, truth in zip(image_embeddings, rows, true_modalities):
        predicted = modalities[int((text[[index[p] for p in row]] @ image).argmax())]
        per_modality.setdefault(truth, []).append(int(predicted == truth))
    total = sum(sum(v) for v in per_modality.values()) / max(len(true_modalities), 1)
    return total, {m: float(np.mean(v)) for m, v in sorted(per_modality.items())}


def _sweep_metrics(values: Sequence[float], embeddings: torch.Tensor) -> dict[str, float]:
    e = embeddings.detach().double().cpu().numpy()
    distance = np.linalg.norm(e - e[0], axis=1)
    centred = e - e.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    steps = np.linalg.norm(np.diff(e, axis=0), axis=1)
    return {
        "distance_spearman": rank_spearman(values[1:], distance[1:]),
        "pc1_spearman": abs(rank_spearman(values, centred @ direction)),
        "step_ratio": float(steps.max() / steps.mean()) if steps.mean() > 0 else float("inf"),
        "total_distance": float(distance[-1]),
    }


def sensitivity_modality(modalities: Sequence[str]) -> str | None:
    """T2w when present, else the first MRI modality, else None."""
    if "T2w" in modalities:
        return "T2w"
    return next((m for m in modalities if get_modality(m).family is ModalityFamily.MRI), None)


def parameter_sensitivity(typical: dict[str, dict[str, Any]], embed_texts: Callable[[Sequence[str]], torch.Tensor],
                          subject: dict[str, Any] | None = None) -> dict[str, Any]:
    """TE and TR sweeps of the typical MRI prompt (see module docstring); empty without an MRI modality."""
    modality = sensitivity_modality(sorted(typical))
    if modality is None:
        return {}
    base = dict(typical[modality])
    subject_meta = SubjectMetadata.from_dict(subject or {})
    out: dict[str, Any] = {"modality": modality}
    tr = float(base.get("repetition_time") or 4000.0)
    te = float(base.get("echo_time") or 90.0)
    sweeps = {
        "te": ("echo_time", [v for v in TE_SWEEP_MS if v < tr], {"repetition_time": tr}),
        "tr": ("repetition_time", [v for v in TR_SWEEP_MS if v > te], {"echo_time": te}),
    }
    for name, (field, values, fixed) in sweeps.items():
        prompts = [build_prompt(modality, ImageMetadata.from_dict({**base, **fixed, field: v}), subject_meta)
                   for v in values]
        for key, value in _sweep_metrics(values, embed_texts(prompts)).items():
            out[f"{name}_{key}"] = value
        out[f"{name}_values_ms"] = list(values)
    return out
