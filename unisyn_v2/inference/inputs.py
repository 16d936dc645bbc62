"""What to predict from: input discovery, image descriptions, the source choice and the target.

Case grouping (documented rule):
- a folder (or a ``dataset.json`` path) holding a ``dataset.json`` gives that description's cases,
  with modality, metadata (BIDS sidecars fill gaps) and subject from it;
- a BIDS tree (``dataset_description.json`` or ``participants.tsv`` beside ``sub-*`` folders) gives one case
  per subject and session as ``unisyn_convert_bids`` finds them (:mod:`unisyn_v2.dataset.bids_convert`);
- any other folder contributes its image files (not recursive), and loose files are taken as given.
  A file ``<prefix>_<token>.<ext>`` whose last token is a known modality name (case-insensitive,
  e.g. ``sub-01_T1w.nii.gz``) is an image of that modality in case ``<prefix>``; a last token
  ``mask``/``brainmask`` marks the case's brain mask; any other file is a case of its own (its full
  stem) whose modality comes from ``--source``. So ``sub-01_T1w.nii.gz`` + ``sub-01_CT.nii.gz``
  form case ``sub-01``, ``patient_001.nii.gz`` is case ``patient_001``.
- metadata of a loose file: the ``--source`` description's fields win, its BIDS sidecar fills the
  rest. Files whose sidecar says ``GeneratedBy: unisyn_v2`` (our own predictions) are skipped.

Source choice (:func:`choose_source`), when a case has several images: ``--source-image`` wins;
otherwise images of the target's own modality are dropped (unless nothing else is left), and the
rest are ranked by (1) the (source, target) task appeared in training, (2) same family as the
target, (3) T1w, (4) file order.

Description specs (``--source`` / ``--target``): a modality name (its typical metadata in the
training set fills the prompt), a full structured prompt (taken as given), or a JSON file
``{"modality", "metadata", "subject"}`` or ``{"prompt"}`` (given fields win, typical fills the rest).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from unisyn_v2.dataset.bids_discovery import discover_bids, find_derivative_mask, image_metadata, is_bids_root
from unisyn_v2.dataset.description import DATASET_JSON, load_dataset_description
from unisyn_v2.dataset.image_io import READABLE_ENDINGS, read_geometry
from unisyn_v2.metadata.bids import read_sidecar, sidecar_path
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.modalities import UnknownModalityError, get_modality, known_modalities
from unisyn_v2.metadata.prompts import ImageDescription, looks_like_prompt, parse_prompt

logger = logging.getLogger(__name__)

MASK_TOKENS = ("mask", "brainmask")
GENERATOR_NAME = "unisyn_v2"


class InputError(ValueError):
    """An input image or folder cannot be used as given (the message says which and what to do)."""


@dataclass(frozen=True)
class DescriptionSpec:
    """A parsed ``--source``/``--target`` value: ``kind`` is ``name``, ``prompt`` or ``json``."""

    modality: str
    metadata: ImageMetadata = field(default_factory=ImageMetadata)
    subject: SubjectMetadata | None = None
    kind: str = "name"

    def with_typical(self, typical: Mapping[str, Any] | None) -> ImageMetadata:
        """Metadata to use: a bare name means the typical acquisition, JSON fields win over it."""
        if self.kind == "prompt" or not typical:
            return self.metadata
        return self.metadata.merged_with(ImageMetadata.from_dict(dict(typical), where=f"typical metadata of {self.modality}"))


@dataclass(frozen=True)
class InputImage:
    """One source candidate: file, what it shows, and whether any metadata was given for it."""

    path: Path
    description: ImageDescription
    metadata_given: bool = True
    typical_asked: bool = False  # ``--source NAME``: the user asked for the modality's typical metadata


@dataclass(frozen=True)
class InputCase:
    """One subject's images (different modalities) and optional brain mask."""

    case_id: str
    images: tuple[InputImage, ...]
    brain_mask: Path | None = None


def parse_description_spec(value: str | Path) -> DescriptionSpec:
    """Read a modality name, a structured prompt or a JSON file path into a :class:`DescriptionSpec`."""
    text = str(value).strip()
    if looks_like_prompt(text):
        parsed = parse_prompt(text)
        has_subject = parsed.subject.age is not None or parsed.subject.sex is not None
        return DescriptionSpec(parsed.modality, parsed.metadata, parsed.subject if has_subject else None, "prompt")
    if text.lower().endswith(".json") or Path(text).is_file():
        return _spec_from_json(Path(text))
    return DescriptionSpec(get_modality(text).name)  # UnknownModalityError lists the known names


def _spec_from_json(path: Path) -> DescriptionSpec:
    if not path.is_file():
        raise InputError(f"description file {path} does not exist; pass a modality name, a prompt or an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: must be a JSON object with 'modality' (+ 'metadata', 'subject') or 'prompt'")
    if "prompt" in data:
        spec = parse_description_spec(str(data["prompt"]))
        return replace(spec, kind="prompt")
    unknown = sorted(set(data) - {"modality", "metadata", "subject"})
    if unknown or "modality" not in data:
        raise InputError(f"{path}: expected keys modality, metadata, subject (or prompt); got {sorted(data)}")
    modality = get_modality(str(data["modality"])).name
    metadata = ImageMetadata.from_dict(data.get("metadata") or {}, where=f"{path}: metadata")
    subject = SubjectMetadata.from_dict(data["subject"], where=f"{path}: subject") if data.get("subject") else None
    return DescriptionSpec(modality, metadata, subject, "json")


def _image_stem(path: Path) -> str | None:
    name = path.name
    return next((name[: -len(e)] for e in READABLE_ENDINGS if name.lower().endswith(e)), None)


def _modality_token(stem: str) -> tuple[str, str | None]:
    """(case prefix, modality name or 'mask') when the last ``_`` token is one; else (stem, None)."""
    prefix, sep, token = stem.rpartition("_")
    if not sep or not prefix:
        return stem, None
    if token.lower() in MASK_TOKENS:
        return prefix, "mask"
    try:
        return prefix, get_modality(token).name
    except UnknownModalityError:
        return stem, None


def is_generated(path: Path) -> bool:
    """True for an image whose sidecar marks it as written by this package (never a source)."""
    side = sidecar_path(path)
    if not side.is_file():
        return False
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    generated = data.get("GeneratedBy") if isinstance(data, dict) else None
    return isinstance(generated, list) and any(isinstance(g, dict) and g.get("Name") == GENERATOR_NAME for g in generated)


def discover_cases(inputs: Sequence[str | Path], source: DescriptionSpec | None = None) -> list[InputCase]:
    """Group the input files/folders into cases (rule in the module docstring)."""
    cases: dict[str, InputCase] = {}
    loose: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.name == DATASET_JSON and path.is_file():
            path = path.parent
        if path.is_dir() and (path / DATASET_JSON).is_file():
            if source is not None:
                logger.warning("%s: descriptions come from its %s; --source is ignored for it", path, DATASET_JSON)
            for case in _cases_from_description(path):
                _add_case(cases, case)
        elif path.is_dir() and is_bids_root(path):
            for case in _cases_from_bids(path):
                _add_case(cases, case)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _image_stem(p))
            if not files:
                raise InputError(f"{path}: no images ({', '.join(READABLE_ENDINGS)}) and no {DATASET_JSON}")
            loose.extend(files)
        elif path.is_file() and _image_stem(path):
            loose.append(path)
        else:
            raise InputError(f"input {path} is neither an image ({', '.join(READABLE_ENDINGS)}), a folder nor a {DATASET_JSON}")
    for case in _cases_from_files(loose, source):
        _add_case(cases, case)
    if not cases:
        raise InputError("no input images found; pass image files or folders with -i")
    return list(cases.values())


def _add_case(cases: dict[str, InputCase], case: InputCase) -> None:
    if case.case_id in cases:
        raise InputError(f"case {case.case_id!r} is given twice (in two inputs); rename one or predict them separately")
    cases[case.case_id] = case


def _cases_from_bids(root: Path) -> Iterable[InputCase]:
    """A BIDS tree: cases, images and the run choice as ``unisyn_convert_bids`` finds them (no registration: one
    source image per case is read), metadata from the sidecars (the voxel size from the header, as for loose files)
    and participants.tsv, the brain mask from ``derivatives/*/`` (the first pipeline, by name, that has one)."""
    cases, skipped = discover_bids(root)
    for item in skipped:
        logger.info("%s: skipped %s (%s)", root, item.path, item.reason)
    pipelines = sorted(p for p in (root / "derivatives").iterdir() if p.is_dir()) if (root / "derivatives").is_dir() else []
    for case in cases:
        images = []
        for image in case.images:
            try:
                metadata, _ = image_metadata(image.sidecar, list(image.sidecar_files), read_geometry(image.path), str(image.path))
            except ValueError as error:  # MetadataError, ImageReadError: this image cannot be a source
                logger.warning("case %s: %s not used (%s)", case.case_id, image.path, error)
                continue
            metadata = replace(metadata, voxel_size=None)
            images.append(InputImage(image.path, ImageDescription(image.modality, metadata, case.subject),
                                     bool(metadata.to_dict())))
        if images:
            mask = next((m for p in pipelines if (m := find_derivative_mask(p, case)) is not None), None)
            yield InputCase(case.case_id, tuple(images), mask)


def _cases_from_description(root: Path) -> Iterable[InputCase]:
    description = load_dataset_description(root)
    for entry in description.cases:
        images = tuple(InputImage(description.path_of(i.file), entry.describe(i), bool(i.metadata.to_dict())) for i in entry.images)
        mask = description.path_of(entry.brain_mask) if entry.brain_mask else None
        yield InputCase(entry.case_id, images, mask)


def _cases_from_files(files: Sequence[Path], source: DescriptionSpec | None) -> list[InputCase]:
    grouped: dict[str, dict[str, Any]] = {}
    for path in dict.fromkeys(p.resolve() for p in files):
        if is_generated(path):
            logger.info("skipping %s: it is a unisyn_v2 prediction", path)
            continue
        stem = _image_stem(path) or path.stem
        case_id, token = _modality_token(stem)
        group = grouped.setdefault(case_id, {"images": [], "mask": None})
        if token == "mask":
            group["mask"] = path
            continue
        modality = token or (source.modality if source is not None else None)
        if modality is None:
            raise InputError(
                f"{path}: cannot tell its modality; name it <case>_<modality>.nii.gz (known: "
                f"{', '.join(known_modalities())}) or pass --source MODALITY|PROMPT|JSON"
            )
        sidecar = read_sidecar(path)
        metadata = ImageMetadata() if sidecar is None else sidecar
        subject = SubjectMetadata()
        if source is not None and source.modality == modality:
            metadata = source.metadata.merged_with(metadata)
        if source is not None and source.subject is not None:
            subject = source.subject
        given = bool(metadata.to_dict()) or (source is not None and source.modality == modality and source.kind != "name")
        asked = not given and source is not None and source.modality == modality and source.kind == "name"
        group["images"].append(InputImage(path, ImageDescription(modality, metadata, subject), given, asked))
    cases = []
    for case_id, group in grouped.items():
        if not group["images"]:
            raise InputError(f"case {case_id}: only a brain mask ({group['mask']}) was given, no image")
        modalities = [i.description.modality for i in group["images"]]
        duplicated = sorted({m for m in modalities if modalities.count(m) > 1})
        if duplicated:
            files = [str(i.path) for i in group["images"] if i.description.modality in duplicated]
            raise InputError(f"case {case_id}: several {', '.join(duplicated)} images ({', '.join(files)}); give one per modality")
        cases.append(InputCase(case_id, tuple(group["images"]), group["mask"]))
    return cases


def _task_seen(source: str, target: str, tasks: set[tuple[str, str]] | None, modalities: set[str] | None) -> bool:
    if tasks:
        return (source, target) in tasks
    return modalities is None or source in modalities


def choose_source(case: InputCase, target_modality: str, tasks: Iterable[tuple[str, str]] | None = None,
                  trained_modalities: Iterable[str] | None = None, source_image: str | Path | None = None) -> InputImage:
    """The best source image of a case for a target (rule in the module docstring)."""
    if source_image is not None:
        wanted = Path(source_image)
        for image in case.images:
            if image.path == wanted.resolve() or image.path.name == wanted.name:
                return image
        raise InputError(f"case {case.case_id}: --source-image {wanted} is not among its images "
                         f"({', '.join(i.path.name for i in case.images)})")
    candidates = [i for i in case.images if i.description.modality != target_modality] or list(case.images)
    if len(candidates) == 1:
        return candidates[0]
    task_set = set(tasks) if tasks else None
    modality_set = set(trained_modalities) if trained_modalities else None
    family = get_modality(target_modality).family

    def rank(item: tuple[int, InputImage]) -> tuple[bool, bool, bool, int]:
        index, image = item
        modality = image.description.modality
        return (not _task_seen(modality, target_modality, task_set, modality_set),
                get_modality(modality).family is not family, modality != "T1w", index)

    chosen = min(enumerate(candidates), key=rank)[1]
    logger.info("case %s: source %s (%s) chosen for target %s among %s", case.case_id, chosen.path.name,
                chosen.description.modality, target_modality, ", ".join(i.description.modality for i in candidates))
    return chosen
