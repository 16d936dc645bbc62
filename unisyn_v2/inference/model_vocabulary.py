"""What a trained model knows of modalities and prompts: what it can synthesise, what a bare modality name
means (the training set's typical acquisition), and whether a target or source prompt makes sense to it.

The predictor asks this before any image is read, so a wrong ``--target`` fails in a second with a message
that says what the model can do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from unisyn_v2.contracts.plans import Plans
from unisyn_v2.inference.inputs import DescriptionSpec, InputError, InputImage, parse_description_spec
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.prompts import ImageDescription

logger = logging.getLogger(__name__)


class ModelVocabulary:
    """A model's modalities, tasks and typical metadata (from ``trainer.json``, else the plans) and its prompt checks."""

    def __init__(self, plans: Plans, trainer_info: Mapping[str, Any], conditioner: Any) -> None:
        self.plans = plans
        self.trainer_info = dict(trainer_info)
        self.conditioner = conditioner

    @property
    def trained_modalities(self) -> list[str]:
        """Modalities the model saw in training (trainer.json, else the plans)."""
        return list(self.trainer_info.get("modalities") or self.plans.modalities)

    @property
    def trained_tasks(self) -> set[tuple[str, str]] | None:
        """(source, target) pairs trained on, when trainer.json records them."""
        tasks = self.trainer_info.get("tasks")
        if not tasks:
            return None
        return {tuple(t.split("->")) if isinstance(t, str) else tuple(t) for t in tasks}  # type: ignore[misc]

    def typical_metadata(self, modality: str) -> dict[str, Any]:
        """Typical acquisition of a modality in the training set (what a bare name means)."""
        typical = self.trainer_info.get("typical_metadata") or self.plans.typical_metadata
        return dict(typical.get(modality, {}))

    def resolve_target(self, target: str | Path | DescriptionSpec) -> DescriptionSpec:
        """Parse and check a target: unknown modality -> error; unseen -> warning; no units -> error."""
        spec = target if isinstance(target, DescriptionSpec) else parse_description_spec(target)
        if spec.modality not in self.plans.normalization:
            raise InputError(f"target {spec.modality}: the model's plans have no normalisation for it, so its units "
                             f"cannot be restored; this model can synthesise {', '.join(self.trained_modalities)}")
        codes = getattr(self.conditioner, "modalities", None)
        if getattr(self.conditioner, "kind", None) == "onehot" and codes is not None and spec.modality not in codes:
            raise InputError(f"target {spec.modality}: this one-hot model has no code for it; it knows {', '.join(codes)}")
        targets = {t for _, t in self.trained_tasks or ()}
        if self.conditioner is None and targets and spec.modality not in targets:
            raise InputError(f"target {spec.modality}: this model takes no prompt and only synthesises {', '.join(sorted(targets))}")
        problems = spec.metadata.problems(spec.modality)
        if problems:  # a TR of 2.3 "ms" in a --target prompt or JSON is a unit slip, not a protocol to synthesise
            raise InputError(f"target {spec.modality}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        if spec.modality not in self.trained_modalities:
            logger.warning("target %s was never seen in training (seen: %s); the synthesis is an extrapolation",
                           spec.modality, ", ".join(self.trained_modalities))
        return spec

    def describe_source(self, image: InputImage) -> ImageDescription:
        """The source's description; an image with no metadata at all gets its modality's typical metadata."""
        description = image.description
        if not image.metadata_given:  # the voxel size stays the header's (filled by the caller)
            typical = {k: v for k, v in self.typical_metadata(description.modality).items() if k != "voxel_size"}
            if image.typical_asked:  # --source NAME means exactly this (README: the typical metadata fills the prompt)
                logger.info("%s: --source %s: the typical %s acquisition of the training set: %s", image.path.name,
                            description.modality, description.modality, typical or "none recorded")
            else:
                logger.warning("%s: no metadata (no sidecar, no --source prompt/JSON); assuming the typical %s acquisition "
                               "of the training set: %s", image.path.name, description.modality, typical or "none recorded")
            description = replace(description, metadata=ImageMetadata.from_dict(typical).merged_with(description.metadata))
        return description

    def target_description(self, spec: DescriptionSpec, source: ImageDescription) -> ImageDescription:
        """Target = spec (+ typical metadata) for the source's subject on the source's voxel grid."""
        metadata = replace(spec.with_typical(self.typical_metadata(spec.modality)),
                           voxel_size=spec.metadata.voxel_size or source.metadata.voxel_size)  # given, else the output grid's
        return ImageDescription(spec.modality, metadata, spec.subject if spec.subject is not None else source.subject)

    def check_prompts(self, case_id: str, source: ImageDescription, target: ImageDescription) -> None:
        """Fail before any work when a prompt does not fit the text encoder's context (224 tokens by default)."""
        tokenizer = getattr(self.conditioner, "tokenizer", None)
        if tokenizer is None:  # one-hot or prompt-free models read no prompt
            return
        for role, description in (("source", source), ("target", target)):
            try:
                tokenizer.encode(description.prompt(self.prompt_style))
            except ValueError as error:
                raise InputError(f"case {case_id}: the {role} ({description.modality}) {error}") from None

    @property
    def prompt_style(self) -> str:
        """How the model's text encoder writes missing values in prompts (legacy for encoders saved before the styles)."""
        return getattr(getattr(self.conditioner, "tokenizer", None), "prompt_style", "compact")
