"""TUMSyn's implicit decoder (LIIF): a small MLP queried at continuous coordinates of the encoder's feature grid.

The encoder runs on the source grid (a thick-slice source keeps its thick slices); the decoder is asked for
the target at any point of the feature box: for each query it takes the features of the 2^3 nearest feature
voxels (LIIF's local ensemble), appends the query's offset from each voxel centre (in feature voxels) and the
query cell size (in feature voxels, so the decoder knows how fine an output it is asked for), runs the MLP
and blends the 8 answers with trilinear weights (LIIF's "area of the opposite corner", Chen et al., CVPR
2021; TUMSyn's decoder). Beyond the outer voxel centres the edge voxel answers, with its offset. At a voxel
centre the answer is that voxel's alone. One model writes any voxel size.

Coordinates are normalised per axis to [-1, 1] over the feature box with the half-voxel convention
(``align_corners=False``): feature voxel i of n has its centre at ``-1 + (2 i + 1) / n``. Axes are (z, y, x).

Two options (issue 20 follow-up, BENCHMARKS.md "Thick slices to fine voxels") make it cheaper to train:
``interpolate_features`` reads the trilinearly interpolated feature at the point and runs the MLP once (with the
offset from the nearest feature voxel), instead of 8 MLP calls blended afterwards, so every fine voxel of a patch
can be supervised for less than the local ensemble's 1/8; ``residual`` adds a pointwise head on the feature grid
whose coarse prediction, trilinearly interpolated at the point, is the base the MLP corrects (its last layer starts
at zero, so training starts from "decode on the coarse grid, then interpolate"). ``unfold`` (z, y, x) half-widths
give the MLP each feature voxel's neighbours too (LIIF's feature unfolding, there 3 x 3 in 2D): (1, 0, 0) stacks the
slices above and below, the axis whose detail a thick-slice source lacks, for 3x the MLP's first-layer input.

Only 3D configurations use it: a 2.5D slab folds its k slices into channels, so the encoder has no z axis to
query between; thick slices are acquired along z, which is exactly the axis LIIF must interpolate.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

DECODERS = ("conv", "liif")
SLICE_PROFILES = ("gaussian", "rect")
#: Points per MLP call when no chunk size is given: bounds the decoder's activations (8 corners each).
DEFAULT_QUERY_CHUNK = 32768


def grid_coordinates(shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(prod(shape), 3) normalised (z, y, x) centres of every voxel of a grid, in C order."""
    axes = [-1.0 + (2.0 * torch.arange(n, device=device, dtype=torch.float32) + 1.0) / n for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


class LIIFDecoder(nn.Module):
    """Features (B, F, Z, Y, X) + query points (B, N, 3) + cell (B, N, 3) -> values (B, N, out_channels).

    Args:
        feature_dim: feature channels of the map it reads.
        hidden: MLP hidden widths (the plans' ``decoder_hidden``, as the pointwise decoder's).
        out_channels: values per point (1: one 3D image).
        local_ensemble: blend the 8 nearest feature voxels (LIIF); False takes the nearest one only.
        max_scale: (z, y, x) largest down-sampling factor training draws (read by the trainer, recorded here
            so the model folder carries it).
        queries: target points per training item.
        profile: slice profile the trainer degrades sources with (``gaussian`` or ``rect``).
        query_chunk: points per MLP call at prediction (memory bound).
        interpolate_features: one MLP call on the trilinearly interpolated feature (offset from the nearest
            voxel) instead of the 8-voxel local ensemble.
        residual: add the trilinear interpolation of a pointwise head's coarse prediction; the MLP learns the
            correction (its last layer starts at zero).
        max_share: share of training batches drawn at exactly ``max_scale`` (the rest uniform in [1, max]);
            0 is TUMSyn's uniform draw. ``queries`` 0 supervises every fine voxel of the patch.
        unfold: (z, y, x) neighbourhood half-widths whose feature voxels are stacked into the MLP's input
            (edge voxels repeated at the border); (0, 0, 0) reads the voxel's own features only.
    """

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (256, 128, 128), out_channels: int = 1,
                 local_ensemble: bool = True, max_scale: Sequence[float] = (4.0, 1.0, 1.0), queries: int = 4096,
                 profile: str = "gaussian", query_chunk: int = DEFAULT_QUERY_CHUNK, interpolate_features: bool = False,
                 residual: bool = False, max_share: float = 0.0, unfold: Sequence[int] = (0, 0, 0)) -> None:
        super().__init__()
        half_widths = tuple(int(u) for u in unfold)
        if len(half_widths) != 3 or min(half_widths) < 0 or max(half_widths) > 3:
            raise ValueError(f"liif_unfold must be three (z, y, x) half-widths in 0-3, got {list(unfold)}")
        unfolded_dim = int(feature_dim) * math.prod(2 * u + 1 for u in half_widths)
        widths = [unfolded_dim + 6, *[int(h) for h in hidden]]
        if min(widths) < 1 or out_channels < 1:
            raise ValueError(f"LIIF decoder widths must be >= 1, got feature_dim={feature_dim}, hidden={list(hidden)}")
        scale = tuple(float(s) for s in max_scale)
        if len(scale) != 3 or min(scale) < 1.0:
            raise ValueError(f"liif_max_scale must be three (z, y, x) factors >= 1, got {list(max_scale)}")
        if profile not in SLICE_PROFILES:
            raise ValueError(f"liif_profile must be one of {', '.join(SLICE_PROFILES)}, got {profile!r}")
        if int(queries) < 0 or int(query_chunk) < 1:
            raise ValueError(f"liif_queries must be >= 0 (0: every fine voxel) and query_chunk >= 1, got {queries}, "
                             f"{query_chunk}")
        if not 0.0 <= float(max_share) <= 1.0:
            raise ValueError(f"liif_max_share must be in [0, 1], got {max_share}")
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], int(out_channels)))
        self.mlp = nn.Sequential(*layers)
        self.base: nn.Sequential | None = None
        if residual:
            base_layers: list[nn.Module] = []
            for w_in, w_out in zip([int(feature_dim), *widths[1:-1]], widths[1:]):
                base_layers += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
            base_layers.append(nn.Linear(widths[-1] if len(widths) > 1 else int(feature_dim), int(out_channels)))
            self.base = nn.Sequential(*base_layers)
            with torch.no_grad():  # the correction starts at zero: training starts from the interpolated base
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()
        self.interpolate_features = bool(interpolate_features)
        self.max_share = float(max_share)
        self.feature_dim = int(feature_dim)
        self.out_channels = int(out_channels)
        self.local_ensemble = bool(local_ensemble)
        self.max_scale = scale
        self.queries = int(queries)
        self.profile = profile
        self.query_chunk = int(query_chunk)
        self.unfold = half_widths

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Decode at the feature grid's own voxel centres: (B, F, Z, Y, X) -> (B, out, Z, Y, X)."""
        batch, _, *shape = features.shape
        coords = grid_coordinates(shape, features.device).unsqueeze(0).expand(batch, -1, -1)
        cell = torch.tensor([2.0 / n for n in shape], device=features.device).expand(batch, coords.shape[1], 3)
        values = self.query(features, coords, cell)
        return values.transpose(1, 2).reshape(batch, self.out_channels, *shape)

    def query(self, features: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor,
              chunk: int | None = None) -> torch.Tensor:
        """Values (B, N, out) at normalised points ``coords`` (B, N, 3) with query cell sizes ``cell`` (B, N, 3) or (B, 3).

        Points are decoded ``chunk`` at a time (default ``query_chunk``), so memory does not grow with N."""
        if features.ndim != 5:
            raise ValueError(f"LIIF decodes 3D feature maps (B, F, Z, Y, X), got shape {tuple(features.shape)}")
        if coords.ndim != 3 or coords.shape[-1] != 3 or coords.shape[0] != features.shape[0]:
            raise ValueError(f"coords must be (B={features.shape[0]}, N, 3), got {tuple(coords.shape)}")
        if cell.ndim == 2:
            cell = cell[:, None, :].expand(-1, coords.shape[1], -1)
        base = self.coarse_prediction(features)
        features = self.unfolded(features)
        step = int(chunk or self.query_chunk)
        if coords.shape[1] <= step:
            return self._query(features, coords, cell, base)
        parts = [self._query(features, coords[:, i:i + step], cell[:, i:i + step], base)
                 for i in range(0, coords.shape[1], step)]
        return torch.cat(parts, dim=1)

    def unfolded(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, Z, Y, X) -> (B, F * prod(2 u + 1), Z, Y, X): each voxel's features, then its neighbours' within
        :attr:`unfold` (edge voxels repeated), in C order of the offsets; unchanged for (0, 0, 0)."""
        if not any(self.unfold):
            return features
        u_z, u_y, u_x = self.unfold
        padded = F.pad(features, (u_x, u_x, u_y, u_y, u_z, u_z), mode="replicate")
        z, y, x = features.shape[2:]
        own = [features]
        shifted = [padded[:, :, u_z + dz:u_z + dz + z, u_y + dy:u_y + dy + y, u_x + dx:u_x + dx + x]
                   for dz, dy, dx in itertools.product(range(-u_z, u_z + 1), range(-u_y, u_y + 1), range(-u_x, u_x + 1))
                   if (dz, dy, dx) != (0, 0, 0)]
        return torch.cat(own + shifted, dim=1)

    def coarse_prediction(self, features: torch.Tensor) -> torch.Tensor | None:
        """The residual base: the pointwise head on every feature voxel (B, out, Z, Y, X), or None without one."""
        if self.base is None:
            return None
        return self.base(features.movedim(1, -1)).movedim(-1, 1)

    def _query(self, features: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor,
               base: torch.Tensor | None = None) -> torch.Tensor:
        correction = self._interpolated(features, coords, cell) if self.interpolate_features \
            else self._ensemble(features, coords, cell)
        if base is None:
            return correction
        return correction + _sample(base, coords)

    def _interpolated(self, features: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """One MLP call on the trilinearly interpolated feature, with the offset from the nearest voxel centre."""
        sizes = torch.tensor(features.shape[2:], device=coords.device, dtype=coords.dtype)
        position = (coords + 1.0) / 2.0 * sizes - 0.5
        nearest = torch.minimum(torch.round(position).clamp_min(0), sizes - 1)
        sampled = _sample(features, coords)
        return self.mlp(torch.cat([sampled, position - nearest, cell * sizes / 2.0], dim=-1))

    def _ensemble(self, features: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        batch, channels, *shape = features.shape
        sizes = torch.tensor(shape, device=coords.device, dtype=coords.dtype)
        flat = features.flatten(2).transpose(1, 2)  # (B, V, F)
        strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=coords.device)
        rel_cell = cell * sizes / 2.0  # query cell in feature voxels
        position = (coords + 1.0) / 2.0 * sizes - 0.5  # continuous feature-voxel index
        if not self.local_ensemble:
            corners, weights = [torch.round(position)], [None]
        else:
            low = torch.floor(position)
            frac = position - low
            corners, weights = [], []
            for offset in itertools.product((0, 1), repeat=3):
                step = torch.tensor(offset, device=coords.device, dtype=coords.dtype)
                corners.append(low + step)
                weights.append(torch.where(step.bool(), frac, 1.0 - frac).prod(dim=-1, keepdim=True))
        result = None
        for corner, weight in zip(corners, weights):
            index = torch.minimum(corner.clamp_min(0), sizes - 1)  # the edge voxel answers beyond the edge
            rel = position - index  # offset from that voxel's centre, in feature voxels
            linear = (index.long() * strides).sum(-1)  # (B, N)
            gathered = torch.gather(flat, 1, linear.unsqueeze(-1).expand(-1, -1, channels))
            value = self.mlp(torch.cat([gathered, rel, rel_cell], dim=-1))
            value = value if weight is None else value * weight
            result = value if result is None else result + value
        assert result is not None
        return result


def _sample(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, C, Z, Y, X) trilinearly at normalised (z, y, x) points (B, N, 3) -> (B, N, C); the edge value beyond
    the outer centres (half-voxel convention, as the decoder's coordinates)."""
    grid = coords.flip(-1)[:, :, None, None, :].to(volume.dtype)  # grid_sample wants (x, y, z)
    sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[:, :, :, 0, 0].transpose(1, 2)


def liif_decoder_of(network: nn.Module) -> LIIFDecoder | None:
    """The LIIF decoder of a (possibly wrapped) GFM or cross-attention network, else None."""
    inner = getattr(network, "module", network)  # DDP
    inner = getattr(inner, "network", inner)  # SlicesAsChannels (never LIIF, but unwrap anyway)
    decoder = getattr(inner, "decoder", None)
    return decoder if isinstance(decoder, LIIFDecoder) else None


def decoder_features(network: nn.Module, source: torch.Tensor, source_text: torch.Tensor | None,
                     target_text: torch.Tensor | None) -> torch.Tensor:
    """The feature map a network's decoder reads for this source and target (GFM: restyled anatomy;
    cross-attention: the fused features), on the source grid."""
    inner = getattr(network, "module", network)
    if hasattr(inner, "encode_anatomy"):
        return inner.decoder_input(inner.encode_anatomy(source, source_text), target_text)
    if hasattr(inner, "fuse"):
        return inner.fuse(inner.encoder(source), target_text)
    raise TypeError(f"{type(inner).__name__} has no implicit decoder path (GFM or cross-attention networks only)")
