"""No silent collapse of NeuroCLIP: detect a contrastive loss at chance or collapsed embeddings, then roll
back to the last good epoch with a lower learning rate, or stop with an error that says what to change.

Issue 16 saw a NeuroCLIP whose loss sat at exactly ln 7 (uniform over the 7 prompts of its batches) for
18 epochs while every prompt got the same text embedding (cosine >= 0.9997 between T1w and T2w), and the
run ended normally. Every epoch is now checked for three symptoms:

- ``loss at chance``: the mean training loss is at least ``(1 - chance_tolerance) * ln K``, K the batch
  size (with identical logits, the symmetric InfoNCE of a batch of K is exactly ln K), or not finite;
- ``text collapse``: the mean pairwise cosine of the text embeddings of a fixed probe of distinct training
  prompts (one per metadata class) is above ``text_cosine_max``;
- ``image collapse``: the same for the image embeddings of those prompts' images (centre crops).

A freshly initialised network can show the symptoms before it has learned anything, so they count only
after ``grace_epochs`` (default: the warm-up epochs) or once an epoch has passed every check. After
``patience`` counted epochs in a row the trainer restores the weights and optimiser state of the last
epoch that passed (the initial weights when none has yet) and multiplies the learning rate by
``lr_factor``; after ``max_recoveries`` such recoveries it raises :class:`NeuroCLIPCollapseError`, one
line that ``unisyn_train`` prints before exiting with status 2. When the last epoch of a run shows a
counted symptom, no epochs are left to recover in: the last good weights are restored (so the artifact
never carries a collapsed encoder), or, when no epoch ever passed, the run stops with the error if the
symptoms lasted ``patience`` epochs or a recovery was already spent, and ends with a warning (too short
to judge) otherwise.

Measured (CPU plan, a 20-case phantom with T1w/T2w/FLAIR as in issue 16, 30 epochs of 20 steps, four
training seeds): three runs never tripped it (one transient epoch at chance at the peak lr recovered by
itself); one sat at ln 7 with image embeddings at cosine 1.0000 from epoch 8, was caught at epoch 10,
went back to epoch 7 with lr x0.3 and ended at loss 0.81 with held-out image->modality top-1 1.00.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import torch

from unisyn_v2.io_utils import finite_or_none
from unisyn_v2.training.neuroclip_data import NeuroCLIPSample

GOOD_CHECKPOINT = "checkpoint_good.pth"
GUARD_FILE = "collapse_guard.json"

GOOD, GRACE, BAD, RECOVER, RESTORE_FINAL, UNJUDGED_FINAL, FAIL = (
    "good", "grace", "bad", "recover", "restore_final", "unjudged_final", "fail")


class NeuroCLIPCollapseError(RuntimeError):
    """NeuroCLIP training collapsed and could not recover (a RuntimeError: the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class CollapseGuardConfig:
    """Thresholds and recovery budget of the collapse guard (see the module docstring).

    ``enabled=False`` only logs the probe statistics; ``max_recoveries=0`` stops at the first detection.
    """

    enabled: bool = True
    chance_tolerance: float = 0.01
    text_cosine_max: float = 0.99
    image_cosine_max: float = 0.99
    patience: int = 3
    grace_epochs: int | None = None
    max_recoveries: int = 2
    lr_factor: float = 0.3
    probe_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.chance_tolerance < 1.0:
            raise ValueError(f"collapse_guard.chance_tolerance must be in [0, 1), got {self.chance_tolerance}")
        for name in ("text_cosine_max", "image_cosine_max"):
            if not -1.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"collapse_guard.{name} must be in (-1, 1], got {getattr(self, name)}")
        if self.patience < 1 or self.max_recoveries < 0 or self.probe_size < 2:
            raise ValueError(f"collapse_guard needs patience >= 1, max_recoveries >= 0 and probe_size >= 2, got "
                             f"{self.patience}, {self.max_recoveries}, {self.probe_size}")
        if self.grace_epochs is not None and self.grace_epochs < 0:
            raise ValueError(f"collapse_guard.grace_epochs must be >= 0, got {self.grace_epochs}")
        if not 0.0 < self.lr_factor <= 1.0:
            raise ValueError(f"collapse_guard.lr_factor must be in (0, 1], got {self.lr_factor}")

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> CollapseGuardConfig:
        """A copy with the given fields replaced (``TrainerSettings.extra["collapse_guard"]``)."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"collapse_guard: unknown setting(s) {unknown}; known: {sorted(known)}")
        return replace(self, **dict(overrides))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine over the distinct pairs of rows (1.0 = all rows point the same way); NaN below 2 rows."""
    n = embeddings.shape[0]
    if n < 2:
        return math.nan
    unit = torch.nn.functional.normalize(embeddings.detach().double(), dim=1)
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def select_probe(samples: Sequence[NeuroCLIPSample], size: int) -> list[NeuroCLIPSample]:
    """A fixed probe: per metadata class its first sample by (case, channel); classes evenly spaced when
    there are more than ``size`` (so the probe prompts are distinct and span the data)."""
    first: dict[str, NeuroCLIPSample] = {}
    for sample in sorted(samples, key=lambda s: (s.class_key, s.case_id, s.channel)):
        first.setdefault(sample.class_key, sample)
    keys = sorted(first)
    if len(keys) > size:
        keys = [keys[round(i * (len(keys) - 1) / (size - 1))] for i in range(size)]
    return [first[k] for k in keys]


@dataclass
class EpochCheck:
    """What the guard measured after one epoch (epoch is 1-based: the number of epochs trained)."""

    epoch: int
    train_loss: float
    chance_loss: float
    text_cosine: float
    image_cosine: float
    symptoms: list[str] = field(default_factory=list)
    verdict: str = ""


class CollapseGuard:
    """The counting and decisions of the guard; the trainer measures, saves and restores."""

    def __init__(self, config: CollapseGuardConfig, grace_epochs: int) -> None:
        self.config = config
        self.grace_epochs = int(config.grace_epochs if config.grace_epochs is not None else grace_epochs)
        self.recoveries = 0
        self.lr_scale = 1.0
        self.streak = 0
        self.armed = False  # an epoch has passed every check
        self.last_good_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def symptoms(self, check: EpochCheck) -> list[str]:
        """Which collapse symptoms the measurements show (empty: a good epoch)."""
        c = self.config
        out = []
        if not math.isfinite(check.train_loss) or check.train_loss >= (1.0 - c.chance_tolerance) * check.chance_loss:
            out.append("loss at chance")
        if not check.text_cosine <= c.text_cosine_max:  # NaN too: the embeddings diverged
            out.append("text collapse")
        if not check.image_cosine <= c.image_cosine_max:
            out.append("image collapse")
        return out

    def observe(self, check: EpochCheck, final_epoch: bool) -> str:
        """Record the epoch and decide: GOOD, GRACE, BAD, RECOVER, RESTORE_FINAL, UNJUDGED_FINAL or FAIL."""
        check.symptoms = self.symptoms(check)
        verdict = self._decide(check, final_epoch)
        check.verdict = verdict
        self.history.append(asdict(check))
        return verdict

    def _decide(self, check: EpochCheck, final_epoch: bool) -> str:
        if not check.symptoms:
            self.streak, self.armed, self.last_good_epoch = 0, True, check.epoch
            return GOOD
        if not self.config.enabled:
            return BAD
        if not self.armed and check.epoch <= self.grace_epochs and not self.recoveries:
            return UNJUDGED_FINAL if final_epoch else GRACE
        self.streak += 1
        if final_epoch and self.armed:  # no epochs left to recover in: finish with the last good weights
            self.events.append({"epoch": check.epoch, "action": "restore_final",
                                "back_to_epoch": self.last_good_epoch, "symptoms": list(check.symptoms)})
            return RESTORE_FINAL
        if final_epoch and self.recoveries:  # recovered before, never passed since, and out of epochs
            return FAIL
        if self.streak >= self.config.patience:
            if self.recoveries >= self.config.max_recoveries or final_epoch:
                return FAIL
            self.recoveries += 1
            self.lr_scale *= self.config.lr_factor
            self.streak = 0
            self.events.append({"epoch": check.epoch, "action": "recover", "back_to_epoch": self.last_good_epoch,
                                "lr_scale": self.lr_scale, "symptoms": list(check.symptoms)})
            return RECOVER
        return UNJUDGED_FINAL if final_epoch else BAD

    def status(self) -> str:
        """ok, recovered, restored (final weights from an earlier epoch) or failed."""
        if self.history and self.history[-1]["verdict"] == FAIL:
            return "failed"
        if any(e["action"] == "restore_final" for e in self.events):
            return "restored"
        return "recovered" if self.recoveries else "ok"

    def summary(self) -> dict[str, Any]:
        """The short record for summaries and logs."""
        return finite_or_none({"status": self.status(), "recoveries": self.recoveries,
                          "max_recoveries": self.config.max_recoveries, "lr_scale": self.lr_scale,
                          "last_good_epoch": self.last_good_epoch, "events": list(self.events)})

    def report(self) -> dict[str, Any]:
        """``collapse_guard.json``: configuration, per-epoch probe statistics and decisions."""
        return finite_or_none({**self.summary(), "config": self.config.to_dict(), "grace_epochs": self.grace_epochs,
                          "epochs": list(self.history)})

    def failure_message(self, where: str, batch_size: float, lr: float, warmup_fraction: float) -> str:
        """One line: what happened (loss at ln K for E epochs, cosines) and what to change."""
        recent = self.history[-self.config.patience:]
        first, last = recent[0], recent[-1]
        parts = []
        at_chance = [h for h in recent if "loss at chance" in h["symptoms"]]
        if at_chance:
            parts.append(f"training loss {last['train_loss']:.3f} at chance ln {batch_size:g} = "
                         f"{last['chance_loss']:.3f} for {len(at_chance)} epochs")
        if any("text collapse" in h["symptoms"] for h in recent):
            parts.append(f"text embeddings of distinct prompts at mean cosine {last['text_cosine']:.4f} "
                         f"(limit {self.config.text_cosine_max})")
        if any("image collapse" in h["symptoms"] for h in recent):
            parts.append(f"image embeddings at mean cosine {last['image_cosine']:.4f} "
                         f"(limit {self.config.image_cosine_max})")
        if not self.config.max_recoveries:
            tried = "recovery is off (max_recoveries 0)"
        else:
            tried = (f"{self.recoveries} of {self.config.max_recoveries} recoveries (back to the weights of epoch "
                     f"{self.last_good_epoch}, lr x{self.config.lr_factor:g} each) "
                     + ("did not help" if self.recoveries >= self.config.max_recoveries
                        else "and the run ended before another"))
        return (f"NeuroCLIP training in {where} collapsed in epochs {first['epoch']}-{last['epoch']}: "
                f"{'; '.join(parts)}; {tried}; lower the learning rate (plans neuroclip.initial_lr, now {lr:g}), "
                f"lengthen the warm-up (warmup_fraction, now {warmup_fraction:g}), use more varied prompts "
                f"(more modalities or protocols) or a larger batch (--batch_size, now {batch_size:g} prompts)")

    def state_dict(self) -> dict[str, Any]:
        """Weights-only-safe state for checkpoints (resume keeps the count of recoveries)."""
        return {"recoveries": self.recoveries, "lr_scale": self.lr_scale, "streak": self.streak,
                "armed": self.armed, "last_good_epoch": self.last_good_epoch,
                "history": [dict(h) for h in self.history], "events": [dict(e) for e in self.events]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.recoveries = int(state.get("recoveries", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.streak = int(state.get("streak", 0))
        self.armed = bool(state.get("armed", False))
        self.last_good_epoch = int(state.get("last_good_epoch", 0))
        self.history = [dict(h) for h in state.get("history", [])]
        self.events = [dict(e) for e in state.get("events", [])]
