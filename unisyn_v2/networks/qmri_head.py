"""Physics-informed MRI head: the GFM's anatomy -> effective PD, T1, T2, T2* maps -> any MR protocol (issue 22).

The GFM's encoder and prompt arithmetic give modality-independent features f_0 of the source. A
pointwise head maps f_0 to per-voxel effective quantitative maps, each positive and bounded through a
sigmoid on a log scale (PD 0-1.5 relative to CSF; T1 at 3 T 150-6000 ms with a per-voxel field exponent
in 0-1, T1(B0) = T1_3T (B0 / 3 T)^k; T2 5-3000 ms; T2* a fraction 0.05-1 of T2), and an MR target is
rendered from them with the signal equation of its sequence and the prompt's TR, TE, TI, flip angle and
field strength (:mod:`unisyn_v2.metadata.signal_equations`, the phantom's physics). CT and PET
targets (and MR modalities without a signal model) keep the GFM's decoder.

With ``qmri_compartments`` K > 1 (the trainer's default 3) the head predicts K such sets per voxel plus softmax
fractions, started at grey matter, white matter and CSF, and the rendered signal is the fraction-weighted sum of
the compartments' signals (the phantom's partial-volume model). With one set, a voxel turning from tissue into
CSF must take its T1 through the inversion null of FLAIR/MPRAGE targets, where the loss rises; on the prompt
sweep part of the CSF stayed tissue-like (BENCHMARKS.md). The exported maps are then effective ones
(:meth:`QMRINetwork.effective_maps`). ``qmri_compartment_spread`` s > 1 keeps each compartment's PD, T1 (at 3 T) and T2
within a factor s of its start (log-symmetric band) instead of the wide ranges, so a compartment stays the tissue it
started as and the fractions alone say what a voxel is made of (partial volume); 0 keeps the wide ranges.

The rendered image is a physical signal in PD units, not the MRI contract's normalised scale (brain
0.5/99.5th percentiles -> 0/1), which depends on the whole image. So: training compares it with the
target patch after one least-squares gain in the brain against the target taken back to raw units
(:func:`fit_to_target` with the image's p_low / p_high), exact when the maps are right; prediction renders
the whole volume and applies the contract itself (``unisyn_v2.models.rendering.finish_rendered_volume``).

The sequence parameters reach the network appended to the text embedding: :class:`PhysicsTextConditioner`
wraps the NeuroCLIP :class:`~unisyn_v2.networks.conditioners.TextConditioner` and adds
``[has signal model, one-hot sequence (4), B0 (T), TR, TE, TI (ms), flip (degrees)]``; a parameter the
description leaves out falls back to :data:`~unisyn_v2.metadata.signal_equations.TYPICAL_PROTOCOLS`,
with a warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unisyn_v2.metadata import signal_equations as se
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.decoders import PointwiseMLPDecoder
from unisyn_v2.networks.gfm import GFMNetwork
from unisyn_v2.networks.outputs import SynthesisOutput

logger = logging.getLogger(__name__)

PHYSICS_DIM = 10  # [has model, one-hot sequence (4), B0, TR, TE, TI, flip]
_FIELDS = ("field_strength", "repetition_time", "echo_time", "inversion_time", "flip_angle")
MAP_NAMES = ("PD", "T1", "T2", "T2star")
PD_MAX = 1.5
T1_RANGE_MS = (150.0, 6000.0)
T2_RANGE_MS = (5.0, 3000.0)
T2STAR_FRACTION = (0.05, 1.0)
REFERENCE_FIELD_T = 3.0
_INITIAL = {"pd": 0.8, "t1": 1200.0, "t1_exponent": 0.4, "t2": 100.0, "t2s_fraction": 0.6}
# qmri_compartments > 1: each voxel is a mixture of compartments whose magnitudes add (the phantom's partial-volume
# model), started at literature 3 T values of grey matter, white matter and CSF (then every further compartment GM)
COMPARTMENT_START = ({"pd": 0.8, "t1": 1400.0, "t2": 95.0}, {"pd": 0.7, "t1": 850.0, "t2": 75.0},
                     {"pd": 1.0, "t1": 4000.0, "t2": 1500.0})
GAIN_MODES = ("patch", "prompt")  # training's receiver gain: least squares per patch, or one per protocol from the prompt


def physics_vector(description: ImageDescription, warned: set[tuple[str, tuple[str, ...]]] | None = None) -> list[float]:
    """The :data:`PHYSICS_DIM` numbers the head renders ``description`` with (zeros: no signal model)."""
    m = description.metadata
    given = {f: getattr(m, f) for f in _FIELDS}
    if se.sequence_for(description.modality, m.repetition_time, m.inversion_time) is None:
        return [0.0] * PHYSICS_DIM
    sequence, values, filled = se.filled_protocol(description.modality, given)
    if filled and (warned is None or (description.modality, tuple(filled)) not in warned):
        if warned is not None:
            warned.add((description.modality, tuple(filled)))
        logger.warning("%s prompt without %s: rendering with the typical %s values %s (signal_equations.TYPICAL_PROTOCOLS)",
                       description.modality, ", ".join(filled), sequence,
                       ", ".join(f"{f}={values[f]:g}" for f in filled))
    one_hot = [1.0 if s == sequence else 0.0 for s in se.SEQUENCES]
    return [1.0, *one_hot, *(values[f] for f in _FIELDS)]


def has_signal_model(description: ImageDescription) -> bool:
    """True when the head renders this target (an MR modality with a sequence), False for the GFM decoder."""
    return se.sequence_for(description.modality, description.metadata.repetition_time,
                           description.metadata.inversion_time) is not None


class PhysicsTextConditioner:
    """The NeuroCLIP text conditioner with the sequence parameters appended (see the module docstring)."""

    kind = "text_physics"

    def __init__(self, text: Any) -> None:
        self.text = text
        self.text_dim = int(text.text_dim) + PHYSICS_DIM
        self._warned: set[tuple[str, tuple[str, ...]]] = set()

    @property
    def tokenizer(self) -> Any:
        """The text side's tokenizer (the predictor checks prompt lengths with it)."""
        return self.text.tokenizer

    @property
    def device(self) -> torch.device:
        return self.text.device

    def embed(self, descriptions: Sequence[ImageDescription]) -> torch.Tensor:
        """(B, text_dim + PHYSICS_DIM): text embedding, then the physics vector."""
        text = self.text.embed(descriptions)
        physics = torch.tensor([physics_vector(d, self._warned) for d in descriptions], dtype=text.dtype,
                               device=text.device).reshape(len(descriptions), PHYSICS_DIM)
        return torch.cat([text, physics], dim=1)

    def to(self, device: torch.device | str) -> "PhysicsTextConditioner":
        """Move the text side."""
        self.text.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for trainer.json."""
        return {**self.text.describe(), "kind": self.kind, "text_dim": self.text_dim, "physics_dim": PHYSICS_DIM}


def _log_range(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.exp(math.log(low) + torch.sigmoid(raw) * (math.log(high) - math.log(low)))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class QMRINetwork(nn.Module):
    """GFM + quantitative-map head; ``net(source, source_emb, target_emb)`` like every synthesis network.

    Embeddings are (B, text_dim + PHYSICS_DIM) (:class:`PhysicsTextConditioner`); the GFM reads the text
    part. For items whose target has a signal model the synthesis is the rendered signal (PD units),
    otherwise the GFM's decoded image.

    Args:
        gfm: the GFM (encoder, prompt affine on the text part, decoder for CT/PET).
        feature_dim: the GFM's feature channels.
        out_channels: image channels per map (2.5D: the k slices; 3D: 1).
        hidden: widths of the pointwise map head.
        dims: 2 (2.5D) or 3.
    """

    renders_mri_signal = True

    def __init__(self, gfm: GFMNetwork, feature_dim: int, out_channels: int, hidden: Sequence[int] = (64, 64),
                 dims: int = 2, gain: str = "patch", compartments: int = 1, compartment_spread: float = 0.0) -> None:
        super().__init__()
        spread = float(compartment_spread)
        if spread != 0.0 and (int(compartments) < 2 or not 1.0 < spread <= 10.0):
            raise ValueError(f"qMRI network: qmri_compartment_spread must be 0 (wide ranges) or in (1, 10] with "
                             f"qmri_compartments >= 2 (got {compartment_spread} with {compartments} compartments)")
        self.compartment_spread = spread
        if gain not in GAIN_MODES:
            raise ValueError(f"qMRI network: qmri_gain {gain!r} is not one of {', '.join(GAIN_MODES)}")
        if not 1 <= int(compartments) <= 8:
            raise ValueError(f"qMRI network: qmri_compartments must be 1-8 (got {compartments})")
        self.compartments = int(compartments)
        self.gfm = gfm
        self.gain_mode = gain
        # "prompt": log receiver gain from the sequence parameters alone, the same for every patch of a protocol, so
        # a patch's map errors cannot be hidden by its own gain (see fit_to_target)
        self.gain_head = nn.Sequential(nn.Linear(PHYSICS_DIM, 32), nn.Tanh(), nn.Linear(32, 1)) if gain == "prompt" else None
        self.out_channels = int(out_channels)
        self.dims = int(dims)
        per_compartment = 5 if self.compartments == 1 else 6  # PD, T1, T1 field exponent, T2, T2* fraction (, fraction)
        self.qmap_head = PointwiseMLPDecoder(feature_dim, tuple(hidden), self.compartments * per_compartment * self.out_channels,
                                             dims)
        last = self.qmap_head.layers[-1]
        starts = [_INITIAL] if self.compartments == 1 else [
            {**_INITIAL, **COMPARTMENT_START[k if k < len(COMPARTMENT_START) else 0]}
            for k in range(self.compartments)]
        # the bands' centres (K, 3): each compartment's start T1, T2, PD (constants: a buffer only to follow the device)
        self.register_buffer("band_centre", torch.tensor([[v["t1"], v["t2"], v["pd"]] for v in starts], dtype=torch.float32),
                             persistent=False)
        start: list[float] = []
        for values in starts:
            t1_fraction = (math.log(values["t1"]) - math.log(T1_RANGE_MS[0])) / (math.log(T1_RANGE_MS[1]) - math.log(T1_RANGE_MS[0]))
            t2_fraction = (math.log(values["t2"]) - math.log(T2_RANGE_MS[0])) / (math.log(T2_RANGE_MS[1]) - math.log(T2_RANGE_MS[0]))
            if spread:  # the band's centre
                t1_fraction = t2_fraction = 0.5
                values = {**values, "pd": 0.5 * PD_MAX}  # raw 0: the centre of the PD band too
            t2s_fraction = (values["t2s_fraction"] - T2STAR_FRACTION[0]) / (T2STAR_FRACTION[1] - T2STAR_FRACTION[0])
            start += [_logit(values["pd"] / PD_MAX), _logit(t1_fraction), _logit(values["t1_exponent"]), _logit(t2_fraction),
                      _logit(t2s_fraction)] + ([0.0] if self.compartments > 1 else [])  # equal fractions at the start
        with torch.no_grad():  # maps start at typical brain values everywhere
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor(start).repeat_interleave(self.out_channels))

    @staticmethod
    def split(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text part, physics part) of a (B, text_dim + PHYSICS_DIM) embedding."""
        return embedding[:, :-PHYSICS_DIM], embedding[:, -PHYSICS_DIM:]

    @staticmethod
    def rendered_items(embedding: torch.Tensor) -> torch.Tensor:
        """(B,) bool: items whose image the head renders (their target has a signal model)."""
        return embedding[:, -PHYSICS_DIM] > 0.5

    def training_gain(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """(B,) receiver gain of each item's rendering in training (``qmri_gain`` "prompt"), None for the per-patch fit."""
        if self.gain_head is None:
            return None
        physics = self.split(embedding)[1].float()
        features = torch.cat([physics[:, :5], torch.log1p(physics[:, 5:].clamp_min(0.0))], dim=1)
        with torch.autocast(physics.device.type, enabled=False):
            return torch.exp(self.gain_head(features)[:, 0])

    def encode_anatomy(self, source: torch.Tensor, source_embedding: torch.Tensor) -> torch.Tensor:
        """f_0 of the source (the GFM's, from the text part of the embedding)."""
        return self.gfm.encode_anatomy(source, self.split(source_embedding)[0])

    def maps(self, anatomy: torch.Tensor, field_strength: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Effective PD, T1 (ms, at ``field_strength`` (B,) tesla, default 3 T), T2, T2* (ms), each (B, C_out, *spatial).

        With compartments (``qmri_compartments`` > 1) each is (B, K, C_out, *spatial) and ``"fraction"`` (softmax over
        K) gives each compartment's share of the voxel; :meth:`render` adds their signals."""
        with torch.autocast(anatomy.device.type, enabled=False):
            raw = self.qmap_head(anatomy.float())
            if self.compartments == 1:
                raw = raw.reshape(raw.shape[0], 5, self.out_channels, *raw.shape[2:])
            else:  # (B, 6, K, C, *spatial): the map index first, as in the single-compartment layout
                raw = raw.reshape(raw.shape[0], self.compartments, 6, self.out_channels, *raw.shape[2:]).transpose(1, 2)
            if self.compartment_spread:
                t1_ref, t2, pd = self._banded(raw[:, 1], 0), self._banded(raw[:, 3], 1), self._banded(raw[:, 0], 2)
            else:
                t1_ref = _log_range(raw[:, 1], *T1_RANGE_MS)
                t2 = _log_range(raw[:, 3], *T2_RANGE_MS)
                pd = PD_MAX * torch.sigmoid(raw[:, 0])
            out = {"pd": pd, "t2": t2,
                   "t2s": t2 * (T2STAR_FRACTION[0] + (T2STAR_FRACTION[1] - T2STAR_FRACTION[0]) * torch.sigmoid(raw[:, 4]))}
            if field_strength is None:
                out["t1"] = t1_ref
            else:
                ratio = (field_strength.float().clamp_min(0.1) / REFERENCE_FIELD_T).reshape(-1, *([1] * (t1_ref.ndim - 1)))
                out["t1"] = t1_ref * ratio ** torch.sigmoid(raw[:, 2])
            if self.compartments > 1:
                out["fraction"] = torch.softmax(raw[:, 5], dim=1)
        return out

    def _banded(self, raw: torch.Tensor, column: int) -> torch.Tensor:
        """(B, K, C, *spatial) raw -> values within [centre / spread, centre x spread] of each compartment's start
        (``column`` 0: T1, 1: T2, 2: PD)."""
        centre = self.band_centre[:, column].reshape(1, -1, *([1] * (raw.ndim - 2)))
        return centre * torch.exp((2.0 * torch.sigmoid(raw) - 1.0) * math.log(self.compartment_spread))

    def effective_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One PD, T1, T2, T2* per voxel: the compartments' PD summed over fractions, times averaged in log space with
        weights fraction x PD (their share of the signal at full relaxation); unchanged with one compartment."""
        if "fraction" not in maps:
            return maps
        weight = maps["fraction"] * maps["pd"]
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
        out = {"pd": (maps["fraction"] * maps["pd"]).sum(1)}
        for name in ("t1", "t2", "t2s"):
            out[name] = torch.exp((weight * torch.log(maps[name])).sum(1))
        return out

    def render(self, anatomy: torch.Tensor, physics: torch.Tensor) -> torch.Tensor:
        """The signal (B, C_out, *spatial) of every item at its own sequence and parameters (rows without a model: 0)."""
        physics = physics.float()
        maps = self.maps(anatomy, physics[:, 5])
        fraction = maps.get("fraction")
        out = torch.zeros_like(maps["pd"] if fraction is None else maps["pd"][:, 0])
        sequence_index = physics[:, 1:5].argmax(dim=1)
        shape = (-1, *([1] * (maps["pd"].ndim - 1)))
        for index, sequence in enumerate(se.SEQUENCES):
            items = torch.nonzero((sequence_index == index) & self.rendered_items(physics), as_tuple=True)[0]
            if items.numel() == 0:
                continue
            tr, te, ti, flip = (physics[items, c].reshape(shape) for c in (6, 7, 8, 9))
            with torch.autocast(anatomy.device.type, enabled=False):
                signal = se.render(sequence, maps["pd"][items], maps["t1"][items], maps["t2"][items], maps["t2s"][items],
                                   tr, te, ti, flip)
                if fraction is not None:  # the compartments' magnitudes add
                    signal = (fraction[items] * signal).sum(1)
            out = out.index_copy(0, items, signal.to(out.dtype))
        return out

    def decode(self, anatomy: torch.Tensor, target_embedding: torch.Tensor) -> torch.Tensor:
        """Rendered signal for items with a signal model, the GFM's decoded image for the others."""
        text, physics = self.split(target_embedding)
        rendered = self.rendered_items(target_embedding)
        if bool(rendered.all()):
            return self.render(anatomy, physics)
        decoded = self.gfm.decode(anatomy, text)
        if not bool(rendered.any()):
            return decoded
        signal = self.render(anatomy, physics).to(decoded.dtype)
        return torch.where(rendered.reshape(-1, *([1] * (decoded.ndim - 1))), signal, decoded)

    def forward(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> SynthesisOutput:
        """Synthesise the target (rendered or decoded) from (B, C, *spatial) source and the two embeddings."""
        anatomy = self.encode_anatomy(source, source_text)
        return SynthesisOutput(synthesis=self.decode(anatomy, target_text), anatomy=anatomy)

    def quantitative_maps(self, source: torch.Tensor, source_text: torch.Tensor, target_text: torch.Tensor) -> torch.Tensor:
        """(B, 4, C_out, *spatial): PD, T1, T2, T2* (ms) of the source's anatomy, T1 at the target's field strength."""
        anatomy = self.encode_anatomy(source, source_text)
        physics = self.split(target_text)[1].float()
        field = torch.where(physics[:, 5] > 0, physics[:, 5], torch.full_like(physics[:, 5], REFERENCE_FIELD_T))
        maps = self.effective_maps(self.maps(anatomy, field))
        return torch.stack([maps["pd"], maps["t1"], maps["t2"], maps["t2s"]], dim=1)


def fit_to_target(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, items: torch.Tensor | None = None,
                  low_over_high: torch.Tensor | None = None, gain: torch.Tensor | None = None) -> torch.Tensor:
    """A rendered ``prediction`` (PD units) on its normalised ``target``'s scale: the least-squares fit in ``mask``.

    The MRI contract maps each image's brain p0.5 / p99.5 (``p_low``, ``p_high``) to 0 / 1, which a patch
    cannot know. With ``low_over_high`` (B,) = p_low / p_high of each target (its preprocessing records
    them), the target is taken back to raw units over p_high, ``t (1 - r) + r``, the rendering gets one
    gain a >= 0 (the receiver's: signal ratios between tissues are kept, so the maps' contrast must be
    physically right, not merely ordered) and returns on the contract's scale, ``(a s - r) / (1 - r)``.
    Without it: a free affine map a s + b (a >= 0), which fits any rendering with the right tissue order
    and leaves the maps' dynamic range undetermined (the first configuration measured). ``items`` (B,)
    bool limits the fit to those items (the others pass through). ``gain`` (B,), with ``low_over_high``: that
    gain instead of the patch's least-squares one (``qmri_gain`` "prompt": one gain per protocol). Differentiable.
    """
    dims = tuple(range(1, prediction.ndim))
    w = mask.to(prediction.dtype).expand_as(prediction) + 1e-3  # nearly only the brain, never an empty fit
    total = w.sum(dims, keepdim=True)
    if low_over_high is not None:
        r = low_over_high.to(prediction.dtype).clamp(0.0, 0.95).reshape(-1, *([1] * (prediction.ndim - 1)))
        raw = target * (1.0 - r) + r
        if gain is not None:
            gain = gain.to(prediction.dtype).reshape(-1, *([1] * (prediction.ndim - 1)))
        else:
            gain = ((w * prediction * raw).sum(dims, keepdim=True)
                    / ((w * prediction * prediction).sum(dims, keepdim=True) + 1e-12 * total)).clamp_min(0.0)
        fitted = (gain * prediction - r) / (1.0 - r)
        if items is None:
            return fitted
        return torch.where(items.reshape(-1, *([1] * (prediction.ndim - 1))), fitted, prediction)
    mean_p = (w * prediction).sum(dims, keepdim=True) / total
    mean_t = (w * target).sum(dims, keepdim=True) / total
    centred = prediction - mean_p
    covariance = (w * centred * (target - mean_t)).sum(dims, keepdim=True)
    variance = (w * centred * centred).sum(dims, keepdim=True)
    scale = (covariance / (variance + 1e-12 * total)).clamp_min(0.0)
    fitted = scale * centred + mean_t
    if items is None:
        return fitted
    return torch.where(items.reshape(-1, *([1] * (prediction.ndim - 1))), fitted, prediction)
