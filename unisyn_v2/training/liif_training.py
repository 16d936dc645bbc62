"""Training an implicit (LIIF) decoder as TUMSyn does: a coarser source, random target points.

Per batch a down-sampling factor is drawn per axis, uniformly in [1, ``max_scale``] of the decoder (default
z in [1, 4], in-plane 1: thick slices; a ``max_share`` of the batches takes the largest factors instead); the
source (and, for the GFM's cycle, the target) patch is acquired through the decoder's slice profile at that
factor (:mod:`unisyn_v2.phantom.slice_profile`), so the encoder sees a coarse grid with the same box;
``queries`` voxel centres of the fine patch are drawn per item (0: all of them) and the decoder is asked for
the target there, with the fine voxel as the query cell. The prompts' voxel sizes are scaled by the factors,
as a thick-slice source's header would say. All items of a batch share the factors (the coarse patches must
stack).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from unisyn_v2.networks.liif import LIIFDecoder, decoder_features
from unisyn_v2.phantom.slice_profile import profile_matrix


def draw_factors(max_scale: Sequence[float], rng: np.random.Generator, max_share: float = 0.0) -> tuple[float, float, float]:
    """One (z, y, x) down-sampling factor per axis, uniform in [1, max]; with probability ``max_share`` the batch
    takes the largest factors instead (a model scored at thick slices should mostly see them)."""
    if max_share > 0.0 and float(rng.random()) < max_share:
        return tuple(float(m) for m in max_scale)  # type: ignore[return-value]
    return tuple(float(rng.uniform(1.0, m)) if m > 1.0 else 1.0 for m in max_scale)  # type: ignore[return-value]


def coarse_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, int, int]:
    """Voxels of the coarse grid covering the same box: round(n / factor), at least 2 (LIIF needs neighbours)."""
    return tuple(max(2, int(round(n / f))) if f > 1.0 else int(n) for n, f in zip(shape, factors))  # type: ignore[return-value]


def degrade(patch: torch.Tensor, factors: Sequence[float], profile: str = "gaussian") -> torch.Tensor:
    """(B, C, Z, Y, X) -> (B, C, z, y, x): each axis acquired through the slice profile at its factor."""
    out = patch
    for axis, (n_in, n_out) in enumerate(zip(patch.shape[2:], coarse_shape(patch.shape[2:], factors))):
        if n_out == n_in:
            continue
        matrix = torch.from_numpy(profile_matrix(n_in, n_out, n_in / n_out, profile)).to(patch.device, patch.dtype)
        out = torch.movedim(torch.tensordot(torch.movedim(out, axis + 2, -1), matrix, dims=([-1], [1])), -1, axis + 2)
    return out.contiguous()


def sample_points(shape: Sequence[int], batch: int, count: int, generator: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random voxel indices per item of a fine patch: (linear indices (B, N), normalised (B, N, 3) centres).

    ``count`` 0 (or the patch's size or more) takes every voxel, in order."""
    total = int(np.prod(shape))
    count = min(int(count), total)
    if count in (0, total):
        linear = torch.arange(total, device=device).expand(batch, -1)
    else:
        linear = torch.stack([torch.randperm(total, generator=generator)[:count] for _ in range(batch)]).to(device)
    z = linear // (shape[1] * shape[2])
    y = (linear // shape[2]) % shape[1]
    x = linear % shape[2]
    sizes = torch.tensor(shape, device=device, dtype=torch.float32)
    index = torch.stack([z, y, x], dim=-1).float()
    return linear, -1.0 + (2.0 * index + 1.0) / sizes


def gather_points(volume: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """(B, C, Z, Y, X) values at linear voxel indices (B, N) -> (B, N, C)."""
    flat = volume.flatten(2)
    return torch.gather(flat, 2, linear.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)


def scaled_descriptions(descriptions: Sequence[Any], factors: Sequence[float]) -> list[Any]:
    """Descriptions whose voxel size (x, y, z) is multiplied by the (z, y, x) factors, as a coarse header says."""
    out = []
    for description in descriptions:
        size = description.metadata.voxel_size
        if size is None:
            out.append(description)
            continue
        scaled = tuple(float(v) * float(f) for v, f in zip(size, reversed(tuple(factors))))
        out.append(dataclasses.replace(description, metadata=dataclasses.replace(description.metadata, voxel_size=scaled)))
    return out


@dataclasses.dataclass
class LIIFBatch:
    """What one LIIF training step needs: coarse patches, query points, fine values and weights."""

    source: torch.Tensor  # coarse (B, 1, z, y, x)
    target: torch.Tensor  # coarse (B, 1, z, y, x): the other side of the GFM's cycle
    coords: torch.Tensor  # (B, N, 3) normalised over the patch box
    cell: torch.Tensor  # (B, 3) the fine voxel, normalised
    target_values: torch.Tensor  # (B, N, 1)
    source_values: torch.Tensor  # (B, N, 1) clean source at the same points
    target_weight: torch.Tensor  # (B, N, 1)
    source_weight: torch.Tensor  # (B, N, 1)
    factors: tuple[float, float, float]


def make_liif_batch(b: dict[str, Any], decoder: LIIFDecoder, rng: np.random.Generator,
                    generator: torch.Generator) -> LIIFBatch:
    """Degrade a device batch (trainer layout (B, 1, Z, Y, X)) and draw the query points."""
    source, target = b["source"], b["target"]
    if source.ndim != 5:
        raise ValueError(f"LIIF training needs 3D patches (B, 1, Z, Y, X), got {tuple(source.shape)}")
    factors = draw_factors(decoder.max_scale, rng, decoder.max_share)
    shape = tuple(int(n) for n in source.shape[2:])
    linear, coords = sample_points(shape, source.shape[0], decoder.queries, generator, source.device)
    cell = torch.tensor([2.0 / n for n in shape], device=source.device).expand(source.shape[0], 3)
    return LIIFBatch(
        source=degrade(source, factors, decoder.profile), target=degrade(target, factors, decoder.profile),
        coords=coords, cell=cell, target_values=gather_points(target, linear),
        source_values=gather_points(b["source_clean"], linear),
        target_weight=gather_points(b["weight"].expand_as(target), linear),
        source_weight=gather_points(b["source_weight"].expand_as(source), linear), factors=factors,
    )


def synthesise_at(network: nn.Module, decoder: LIIFDecoder, source: torch.Tensor, source_text: Any, target_text: Any,
                  coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Encode a (coarse) source and decode the target at the points: (B, N, 1)."""
    return decoder.query(decoder_features(network, source, source_text, target_text), coords, cell, chunk=coords.shape[1])


def _rngs(trainer: Any) -> tuple[np.random.Generator, torch.Generator]:
    """The trainer's LIIF random streams, created once from its seed (factors and points differ per step)."""
    if getattr(trainer, "_liif_rngs", None) is None:
        seed = int(getattr(trainer.settings, "seed", 0)) + 1009 * int(getattr(trainer.distributed, "rank", 0))
        generator = torch.Generator().manual_seed(seed)
        trainer._liif_rngs = (np.random.default_rng(seed), generator)
    return trainer._liif_rngs


def liif_train_step(trainer: Any, batch: dict[str, Any], decoder: LIIFDecoder, cyclic: bool) -> dict[str, float]:
    """One LIIF step of a synthesis trainer: L1 at random fine points from coarse inputs.

    ``cyclic`` (GFM): both coarse images are encoded to anatomy with their coarse prompts, each is decoded at
    the points with the other's (fine) prompt, and the plans' cyclic loss compares the anatomies; otherwise
    (cross-attention) source -> target, plus target -> source when the trainer trains both directions."""
    from unisyn_v2.training.losses import weighted_l1

    rng, generator = _rngs(trainer)
    b = trainer.batch_to_device(batch)
    lb = make_liif_batch(b, decoder, rng, generator)
    embed = trainer.conditioner.embed if trainer.conditioner is not None else (lambda _d: None)
    coarse_source_text = embed(scaled_descriptions(batch["source_descriptions"], lb.factors))
    coarse_target_text = embed(scaled_descriptions(batch["target_descriptions"], lb.factors))

    def forward(network: nn.Module, b: dict[str, Any]) -> Any:
        inner = getattr(network, "module", network)
        if cyclic:
            anatomy_source = inner.encode_anatomy(lb.source, coarse_source_text)
            anatomy_target = inner.encode_anatomy(lb.target, coarse_target_text)
            target_hat = decoder.query(inner.decoder_input(anatomy_source, b["target_text"]), lb.coords, lb.cell,
                                       chunk=lb.coords.shape[1])
            source_hat = decoder.query(inner.decoder_input(anatomy_target, b["source_text"]), lb.coords, lb.cell,
                                       chunk=lb.coords.shape[1])
            return trainer.cyclic_loss(target_hat, lb.target_values, source_hat, lb.source_values, anatomy_source,
                                       anatomy_target, lb.target_weight, lb.source_weight)
        features = inner.fuse(inner.encoder(lb.source), b["target_text"])
        loss = weighted_l1(decoder.query(features, lb.coords, lb.cell, chunk=lb.coords.shape[1]), lb.target_values,
                           lb.target_weight)
        if trainer.both_directions:
            back = inner.fuse(inner.encoder(lb.target), b["source_text"])
            loss = loss + weighted_l1(decoder.query(back, lb.coords, lb.cell, chunk=lb.coords.shape[1]), lb.source_values,
                                      lb.source_weight)
        return loss

    with trainer.autocast():
        result = trainer.run_network(forward, b)
    loss = result.total if cyclic else result
    trainer.optimize(loss)
    out = {"loss": float(loss.detach())}
    if cyclic:
        out.update(feature_loss=float(result.feature.detach()), synthesis_loss=float(result.synthesis.detach()))
    return out
