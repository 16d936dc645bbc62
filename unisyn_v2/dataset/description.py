"""The dataset.json schema: cases, each with its own set of images, modalities and metadata.

Unlike nnU-Net's fixed channel list, every case names its images, so subjects may differ in which
modalities they have. Loading validates types and collects every problem (case, file, field) before
raising, so a user fixes a broken dataset in one pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unisyn_v2.io_utils import confined_path
from unisyn_v2.metadata.bids import BIDS_KEY_OF, load_json_file, read_sidecar, sidecar_path
from unisyn_v2.metadata.fields import FIELD_UNITS, ImageMetadata, MetadataError, SubjectMetadata
from unisyn_v2.metadata.modalities import UnknownModalityError, get_modality
from unisyn_v2.metadata.prompts import ImageDescription

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
_TOP_KEYS = {"name", "description", "reference", "licence", "license", "cases", "release"}
_CASE_KEYS = {"id", "subject", "images", "brain_mask", "lesion_mask"}
_IMAGE_KEYS = {"file", "modality", "metadata"}
#: Case ids become file names (<id>.npy, <id>_mask.npy, <id>_<target>.nii.gz): keep them well inside 255 bytes.
MAX_CASE_ID_BYTES = 200


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, located as precisely as possible."""

    message: str
    case: str | None = None
    file: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in (("case", self.case), ("file", self.file), ("field", self.field)) if v)
        return f"[{where}] {self.message}" if where else self.message


class DatasetError(ValueError):
    """A dataset failed validation; ``problems`` lists everything found."""

    def __init__(self, source: Path, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {self.headline()}" + "".join(f"\n  - {p}" for p in problems[1:]))

    def headline(self) -> str:
        """One line: the only problem, or the count and the first one (the rest follow on their own lines)."""
        if len(self.problems) == 1:
            return str(self.problems[0])
        return f"{len(self.problems)} problems; the first: {self.problems[0]}"


@dataclass(frozen=True)
class ImageEntry:
    """One image of a case: file (relative to the dataset folder), modality and metadata."""

    file: str
    modality: str
    metadata: ImageMetadata = field(default_factory=ImageMetadata)


@dataclass(frozen=True)
class CaseEntry:
    """One subject: its images (a modality repeats only with metadata that tell its images apart) and subject metadata."""

    case_id: str
    images: tuple[ImageEntry, ...]
    subject: SubjectMetadata = field(default_factory=SubjectMetadata)
    brain_mask: str | None = None
    #: optional lesion label map (0 = none, any positive integer a lesion class) on the images' grid: patches are
    #: oversampled and the loss may be weighted there (plans ``training.lesion_oversample`` / ``lesion_weight``)
    lesion_mask: str | None = None

    @property
    def modalities(self) -> list[str]:
        """Modalities of the case in file order."""
        return [image.modality for image in self.images]

    def describe(self, image: ImageEntry) -> ImageDescription:
        """Modality, metadata and subject of one image (what its prompt says)."""
        return ImageDescription(image.modality, image.metadata, self.subject)


@dataclass(frozen=True)
class DatasetDescription:
    """A parsed dataset.json and the folder it belongs to."""

    root: Path
    name: str
    cases: tuple[CaseEntry, ...]
    description: str = ""
    #: things that do not stop the dataset but deserve a look (a sidecar contradicting dataset.json)
    warnings: tuple[Problem, ...] = ()

    def case(self, case_id: str) -> CaseEntry:
        """Look a case up by id."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"{self.root / DATASET_JSON}: no case {case_id!r}")

    def path_of(self, relative: str) -> Path:
        """Absolute path of a dataset file, confined to the dataset folder."""
        return confined_path(self.root, relative)

    @property
    def modalities(self) -> list[str]:
        """Every modality present, in first-seen order."""
        seen: dict[str, None] = {}
        for case in self.cases:
            for image in case.images:
                seen.setdefault(image.modality, None)
        return list(seen)


def load_dataset_description(root: Path, read_sidecars: bool = True) -> DatasetDescription:
    """Parse ``root/dataset.json``; raises :class:`DatasetError` listing every schema problem."""
    root = Path(root)
    source = root / DATASET_JSON
    if not source.is_file():
        raise DatasetError(source, [Problem(f"missing {DATASET_JSON}; see the README for the raw dataset format")])
    try:
        data = load_json_file(source)
    except ValueError as error:
        raise DatasetError(source, [Problem(str(error).removeprefix(f"{source}: "))]) from None
    problems: list[Problem] = []
    warnings: list[Problem] = []
    if not isinstance(data, dict):
        raise DatasetError(source, [Problem("the top level must be a JSON object")])
    for key in sorted(set(data) - _TOP_KEYS):
        problems.append(Problem(f"unknown top-level key; remove or rename it (known: {', '.join(sorted(_TOP_KEYS))})", field=key))
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        problems.append(Problem("'cases' must be a non-empty list of case objects", field="cases"))
        raw_cases = []
    cases: list[CaseEntry] = []
    seen_ids: set[str] = set()
    for index, raw_case in enumerate(raw_cases):
        case = _parse_case(root, raw_case, index, problems, warnings, read_sidecars)
        if case is None:
            continue
        if case.case_id in seen_ids:
            problems.append(Problem("duplicated case id; give every case its own id", case=case.case_id, field="id"))
            continue
        seen_ids.add(case.case_id)
        cases.append(case)
    problems.extend(_colliding_ids([case.case_id for case in cases]))
    if problems:
        raise DatasetError(source, problems)
    return DatasetDescription(root, str(data.get("name", root.name)), tuple(cases), str(data.get("description", "")),
                              tuple(warnings))


def _case_id_problem(case_id: Any) -> str | None:
    """Why ``case_id`` cannot name a case's files, or None."""
    if not isinstance(case_id, str) or not case_id.strip():
        return "it is empty or not a string"
    if "/" in case_id or "\\" in case_id:
        return "it holds '/' or '\\'"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return "it holds control characters (a line break or tab?)"
    if case_id != case_id.strip():
        return "it starts or ends with a space"
    if case_id in (".", ".."):
        return "'.' and '..' name folders"
    if len(case_id.encode()) > MAX_CASE_ID_BYTES:
        return f"it is longer than {MAX_CASE_ID_BYTES} bytes"
    return None


def _colliding_ids(ids: list[str]) -> list[Problem]:
    """Ids whose files would overwrite each other: equal but for letter case (case-insensitive file systems), or
    '<id>_mask', '<id>_head' or '<id>_lesion', the names of case <id>'s preprocessed brain, head and lesion masks."""
    problems: list[Problem] = []
    folded: dict[str, str] = {}
    for case_id in ids:
        other = folded.setdefault(case_id.casefold(), case_id)
        if other != case_id:
            problems.append(Problem(f"case ids {other!r} and {case_id!r} differ only in letter case; their files collide "
                                    "on case-insensitive file systems (macOS, Windows): rename one", case=case_id, field="id"))
    known = set(ids)
    for case_id in ids:
        for suffix, what in (("_mask", "brain mask"), ("_head", "head mask"), ("_lesion", "lesion mask")):
            if case_id.endswith(suffix) and case_id[: -len(suffix)] in known:
                problems.append(Problem(f"case id {case_id!r} collides with the preprocessed {what} of case "
                                        f"{case_id[: -len(suffix)]!r} ({case_id}.npy); rename it", case=case_id, field="id"))
    return problems


def _parse_case(root: Path, raw: Any, index: int, problems: list[Problem], warnings: list[Problem],
                read_sidecars: bool) -> CaseEntry | None:
    label = f"#{index}"
    if not isinstance(raw, dict):
        problems.append(Problem("each case must be a JSON object", case=label))
        return None
    case_id = raw.get("id")
    if (reason := _case_id_problem(case_id)) is not None:
        problems.append(Problem(f"'id' must be a non-empty string usable in file names, but {reason} (got {case_id!r})",
                                case=label, field="id"))
        return None
    for key in sorted(set(raw) - _CASE_KEYS):
        problems.append(Problem(f"unknown case key; remove or rename it (known: {', '.join(sorted(_CASE_KEYS))})",
                                case=case_id, field=key))
    try:
        subject = SubjectMetadata.from_dict(raw.get("subject") or {}, where="subject")
    except MetadataError as error:
        problems.append(Problem(str(error), case=case_id, field="subject"))
        subject = SubjectMetadata()
    brain_mask = raw.get("brain_mask")
    if brain_mask is not None and not _check_relative(root, brain_mask, case_id, "brain_mask", problems):
        brain_mask = None
    lesion_mask = raw.get("lesion_mask")
    if lesion_mask is not None and not isinstance(lesion_mask, str):
        problems.append(Problem(f"'lesion_mask' must be a file path (got {lesion_mask!r})", case=case_id, field="lesion_mask"))
        lesion_mask = None
    if lesion_mask is not None and not _check_relative(root, lesion_mask, case_id, "lesion_mask", problems):
        lesion_mask = None
    images: list[ImageEntry] = []
    raw_images = raw.get("images")
    if not isinstance(raw_images, list):
        problems.append(Problem("'images' must be a list", case=case_id, field="images"))
        raw_images = []
    for raw_image in raw_images:
        image = _parse_image(root, raw_image, case_id, problems, warnings, read_sidecars)
        if image is not None:
            images.append(image)
    problems.extend(_repeated_prompts(images, subject, case_id))
    return CaseEntry(case_id, tuple(images), subject, brain_mask, lesion_mask)


def _repeated_prompts(images: list[ImageEntry], subject: SubjectMetadata, case_id: str) -> list[Problem]:
    """A modality may appear several times in a case (the same subject at several protocols teaches what
    TE, TI or flip angle do), but only with metadata that tell the images apart: two images with one
    prompt are a listing mistake or a pair a model cannot learn anything from."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for image in images:
        try:
            prompt = ImageDescription(image.modality, image.metadata, subject).prompt()
        except MetadataError:  # a text value a prompt cannot hold: reported where the prompt is built
            prompt = repr((image.modality, image.metadata))
        if prompt in seen:
            problems.append(Problem(f"is a second {image.modality} image with the same metadata (prompt) as {seen[prompt]}; "
                                    "images of one modality in a case need metadata that tell them apart "
                                    "(e.g. their echo_time)", case=case_id, file=image.file, field="metadata"))
        else:
            seen[prompt] = image.file
    return problems


def _parse_image(root: Path, raw: Any, case_id: str, problems: list[Problem], warnings: list[Problem],
                 read_sidecars: bool) -> ImageEntry | None:
    if not isinstance(raw, dict):
        problems.append(Problem("each image must be a JSON object with file, modality, metadata", case=case_id, field="images"))
        return None
    file = raw.get("file")
    if not isinstance(file, str) or not _check_relative(root, file, case_id, "file", problems):
        if not isinstance(file, str):
            problems.append(Problem(f"'file' must be a string (got {file!r})", case=case_id, field="file"))
        return None
    for key in sorted(set(raw) - _IMAGE_KEYS):
        problems.append(Problem(f"unknown image key; remove or rename it (known: {', '.join(sorted(_IMAGE_KEYS))})",
                                case=case_id, file=file, field=key))
    if "modality" not in raw:
        problems.append(Problem("'modality' is missing; name the image's modality (e.g. T1w, CT, FDG-PET)",
                                case=case_id, file=file, field="modality"))
        return None
    try:
        modality = get_modality(raw.get("modality", "")).name
    except UnknownModalityError as error:
        problems.append(Problem(str(error), case=case_id, file=file, field="modality"))
        return None
    try:
        metadata = ImageMetadata.from_dict(raw.get("metadata") or {}, where="metadata")
        if read_sidecars:
            sidecar = read_sidecar(root / file)
            if sidecar is not None:
                warnings.extend(_sidecar_conflicts(metadata, sidecar, case_id, file))
                metadata = metadata.merged_with(sidecar)
    except MetadataError as error:
        problems.append(Problem(str(error), case=case_id, file=file, field="metadata"))
        metadata = ImageMetadata()
    return ImageEntry(file, modality, metadata)


def _sidecar_conflicts(metadata: ImageMetadata, sidecar: ImageMetadata, case_id: str, file: str) -> list[Problem]:
    """A warning per field that dataset.json and the image's BIDS sidecar both give, differently."""
    side = sidecar_path(Path(file)).as_posix()
    out = []
    for name, mine, theirs in metadata.conflicts_with(sidecar):
        unit = f" {FIELD_UNITS[name]}" if name in FIELD_UNITS else ""
        converted = ", converted from seconds" if unit == " ms" else ""
        out.append(Problem(
            f"{DATASET_JSON} gives {_shown(mine)}{unit} but the BIDS sidecar {side} gives {_shown(theirs)}{unit} "
            f"({BIDS_KEY_OF.get(name, name)}{converted}); the {DATASET_JSON} value is used: correct the wrong one",
            case=case_id, file=file, field=f"metadata.{name}"))
    return out


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _check_relative(root: Path, relative: str, case_id: str, field_name: str, problems: list[Problem]) -> bool:
    try:
        confined_path(root, relative)
    except ValueError as error:
        problems.append(Problem(str(error), case=case_id, file=relative, field=field_name))
        return False
    return True
