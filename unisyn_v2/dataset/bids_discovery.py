"""Reading a BIDS tree: its cases, images, sidecar metadata and runs (``unisyn_convert_bids`` and
``unisyn_predict -i BIDS_ROOT``), and the modality <-> BIDS name table and file placing the BIDS writers share.

Discovery: one case per subject and session, ``sub-<s>`` or ``sub-<s>_ses-<t>``. Images are
``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]`` with the suffixes of :data:`ANAT_SUFFIXES` (``T1w`` with a
``ce-`` entity is T1CE), ``pet/*_pet.nii[.gz]`` (the modality from the sidecar's ``TracerName``, else the
``trc-`` entity: FDG, AV45/florbetapir, tau tracers), and CT where a dataset stores it:
``ct/*_ct.nii[.gz]`` or ``anat/*_CT.nii[.gz]``. ``derivatives/``, ``sourcedata/`` and dot folders are
not read. Sidecars follow BIDS inheritance (``T1w.json`` at the top, ``sub-01/sub-01_T1w.json``, ...,
the file's own sidecar last wins); times arrive in seconds and are converted to ms
(:func:`unisyn_v2.metadata.bids.metadata_from_bids`), PET uptake is ``ScanStart - InjectionStart``
(seconds -> min), ``Units`` ``Bq/mL`` is written ``Bq/ml``, the voxel size comes from the image header.
Age and sex come from ``participants.tsv`` (``age``, ``sex``: M/F/male/female; ``n/a`` is unknown;
``89+`` is 89), a session's ``age`` in ``sub-*/sub-*_sessions.tsv`` wins over it.

Choice among runs and acquisitions of one modality (documented rule): ``--run N`` keeps run N (a file
without ``run-`` is run 1) where the case has it; otherwise, and for cases without run N, the image with
the smallest voxel volume (highest resolution) wins, then one without an ``acq-`` label, then the
highest run number (a repeated run is usually the re-scan of a failed one), then the name. With
``all_runs`` every image is kept (the dataset format allows a modality several times when the
metadata tell the images apart). Every image not used is reported with the reason.
"""
from __future__ import annotations

import csv
import errno
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from unisyn_v2.dataset.image_io import Geometry
from unisyn_v2.io_utils import commit_file, copy_file_atomic, temp_prefix
from unisyn_v2.metadata.bids import load_json_file, metadata_from_bids
from unisyn_v2.metadata.fields import ImageMetadata, MetadataError, SubjectMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality, known_modalities

logger = logging.getLogger(__name__)

NIFTI_ENDINGS = (".nii.gz", ".nii")
#: anat suffix (case as BIDS writes it) -> modality; ``T1w`` with a ``ce-`` entity is T1CE
ANAT_SUFFIXES = {"T1w": "T1w", "T2w": "T2w", "FLAIR": "FLAIR", "PDw": "PD", "PD": "PD", "T2starw": "T2star",
                 "T2star": "T2star", "swi": "SWI", "SWI": "SWI", "CT": "CT", "ct": "CT"}
#: TracerName / trc- label (lower case, letters and digits only) -> PET modality
TRACERS = {"fdg": "FDG-PET", "18ffdg": "FDG-PET", "fluorodeoxyglucose": "FDG-PET", "av45": "AV45-PET",
           "florbetapir": "AV45-PET", "18fav45": "AV45-PET", "18fflorbetapir": "AV45-PET", "tau": "TAU-PET",
           "av1451": "TAU-PET", "flortaucipir": "TAU-PET", "18fav1451": "TAU-PET", "18fflortaucipir": "TAU-PET",
           "mk6240": "TAU-PET", "18fmk6240": "TAU-PET", "pi2620": "TAU-PET", "18fpi2620": "TAU-PET"}
#: reference preference when the asked reference modality is missing from a case
REFERENCE_ORDER = ("T1w", "T1CE", "T2w", "FLAIR", "PD", "T2star", "SWI", "CT", "FDG-PET", "AV45-PET", "TAU-PET")
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


class BidsError(ValueError):
    """A BIDS tree cannot be converted as asked (the message names the folder or file and what to do)."""


# ----------------------------------------------------------------------------- names
def bids_name_of(modality: str) -> tuple[str, str, dict[str, str]]:
    """(datatype folder, suffix, extra entities) under which a modality is written in BIDS."""
    name = get_modality(modality).name
    table: dict[str, tuple[str, str, dict[str, str]]] = {
        "T1w": ("anat", "T1w", {}), "T1CE": ("anat", "T1w", {"ce": "gadolinium"}), "T2w": ("anat", "T2w", {}),
        "FLAIR": ("anat", "FLAIR", {}), "PD": ("anat", "PDw", {}), "T2star": ("anat", "T2starw", {}),
        "SWI": ("anat", "swi", {}), "CT": ("ct", "ct", {}),
    }
    if name in table:
        return table[name]
    modality_object = get_modality(name)
    if modality_object.family is ModalityFamily.PET:
        return "pet", "pet", {"trc": re.sub(r"[^A-Za-z0-9]", "", modality_object.tracer or name)}
    return "anat", re.sub(r"[^A-Za-z0-9]", "", name), {}


def parse_bids_name(file_name: str) -> tuple[dict[str, str], str, str] | None:
    """(entities in order, suffix, ending) of ``sub-01_ses-1_run-2_T1w.nii.gz``; None when not BIDS-shaped."""
    ending = next((e for e in (*NIFTI_ENDINGS, ".json", ".tsv") if file_name.endswith(e)), None)
    if ending is None:
        return None
    parts = file_name[: -len(ending)].split("_")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if match is None or match.group(1) in entities:
            return None
        entities[match.group(1)] = match.group(2)
    return entities, parts[-1], ending


def case_id_of(subject: str, session: str | None) -> str:
    """``sub-01`` or ``sub-01_ses-pre``."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def split_case_id(case_id: str) -> tuple[str, str | None]:
    """(subject label, session label or None) of a BIDS case id; other ids become a letters-and-digits label."""
    match = re.fullmatch(r"sub-([a-zA-Z0-9]+)(?:_ses-([a-zA-Z0-9]+))?", case_id)
    if match:
        return match.group(1), match.group(2)
    label = re.sub(r"[^a-zA-Z0-9]", "", case_id)
    if not label:
        raise BidsError(f"case id {case_id!r} has no letters or digits to name a BIDS subject with")
    return label, None


def is_bids_root(path: Path) -> bool:
    """A folder with ``dataset_description.json`` or ``participants.tsv`` and at least one ``sub-*`` folder."""
    path = Path(path)
    return (path.is_dir() and ((path / "dataset_description.json").is_file() or (path / "participants.tsv").is_file())
            and any(p.is_dir() and p.name.startswith("sub-") for p in path.iterdir()))


# ----------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class BidsImage:
    """One image found in the tree, with what it shows and where its metadata came from."""

    path: Path
    modality: str
    entities: dict[str, str]
    suffix: str
    sidecar: dict[str, Any]
    sidecar_files: tuple[str, ...]  # relative to the BIDS root, top level first (the last wins)
    metadata: ImageMetadata = field(default_factory=ImageMetadata)
    metadata_sources: dict[str, str] = field(default_factory=dict)  # field -> file it came from

    @property
    def run(self) -> int:
        """The run number (1 when the name has none)."""
        text = self.entities.get("run", "1")
        return int(text) if text.isdigit() else 1


@dataclass
class BidsCase:
    """One subject (and session): its images and subject metadata."""

    case_id: str
    subject_label: str
    session: str | None
    images: list[BidsImage]
    subject: SubjectMetadata = field(default_factory=SubjectMetadata)
    subject_sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {"file": self.path, "reason": self.reason}


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a BIDS .tsv file (header row first), with an error naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BidsError(f"{path}: cannot read the table ({error})") from None
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def _subject_fields(row: dict[str, str], where: str) -> tuple[dict[str, Any], list[str]]:
    """age and sex of a participants/sessions row; notes for values that cannot be used."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    age = row.get("age", "")
    if age and age.lower() != "n/a":
        text = age.rstrip("+")
        try:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            out["age"] = value
        except ValueError:
            notes.append(f"{where}: age {age!r} is not a number; age left unknown")
    sex = row.get("sex", "")
    if sex and sex.lower() != "n/a":
        normalised = {"m": "M", "male": "M", "f": "F", "female": "F"}.get(sex.lower())
        if normalised is None:
            notes.append(f"{where}: sex {sex!r} is neither M nor F; sex left unknown")
        else:
            out["sex"] = normalised
    return out, notes


def _participants(root: Path) -> dict[str, dict[str, str]]:
    path = root / "participants.tsv"
    if not path.is_file():
        return {}
    rows = read_tsv(path)
    return {row["participant_id"].removeprefix("sub-"): row for row in rows if row.get("participant_id")}


def _inherited_sidecar(root: Path, image: Path, entities: dict[str, str], suffix: str) -> tuple[dict[str, Any], list[str]]:
    """The image's sidecar after BIDS inheritance: JSON files of the same suffix whose entities are a subset
    of the image's, from the top folder down to the image's own folder; lower (and more specific) files win."""
    folders = [root]
    for parent in reversed(image.parent.relative_to(root).parents[:-1]):
        folders.append(root / parent)
    folders.append(image.parent)
    found: list[tuple[int, int, Path]] = []
    for depth, folder in enumerate(dict.fromkeys(folders)):
        for candidate in sorted(folder.glob(f"*{suffix}.json")):
            parsed = parse_bids_name(candidate.name)
            if parsed is None or parsed[1] != suffix:
                continue
            if all(entities.get(k) == v for k, v in parsed[0].items()):
                found.append((depth, len(parsed[0]), candidate))
    merged: dict[str, Any] = {}
    files = []
    for _depth, _count, path in sorted(found, key=lambda item: (item[0], item[1])):
        try:
            data = load_json_file(path)
        except (OSError, ValueError) as error:
            raise MetadataError(f"unreadable sidecar ({str(error).removeprefix(f'{path}: ')})") from None
        if not isinstance(data, dict):
            raise MetadataError(f"{_relative(root, path)}: a BIDS sidecar must be a JSON object")
        merged.update(data)
        files.append(_relative(root, path))
    return merged, files


def _tracer_modality(sidecar: dict[str, Any], entities: dict[str, str]) -> str | None:
    for value in (sidecar.get("TracerName"), entities.get("trc")):
        if isinstance(value, str):
            key = re.sub(r"[^a-z0-9]", "", value.lower())
            if key in TRACERS:
                return TRACERS[key]
    return None


def _modality_of(datatype: str, suffix: str, entities: dict[str, str], sidecar: dict[str, Any]) -> str | None:
    if datatype == "pet" and suffix == "pet":
        return _tracer_modality(sidecar, entities)
    if datatype == "ct" and suffix.lower() == "ct":
        return "CT"
    if datatype == "anat" and suffix in ANAT_SUFFIXES:
        modality = ANAT_SUFFIXES[suffix]
        return "T1CE" if modality == "T1w" and "ce" in entities else modality
    return None


def _round_value(value: Any) -> Any:
    """Seconds -> ms products such as 2.9000000000000004 back to the number written (10 significant digits)."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, tuple):
        return tuple(_round_value(v) for v in value)
    return value


def image_metadata(sidecar: dict[str, Any], sidecar_files: list[str], geometry: Geometry, where: str,
                   ) -> tuple[ImageMetadata, dict[str, str]]:
    """Metadata of one BIDS image (sidecar in BIDS units -> ours), and the file each field came from."""
    metadata = metadata_from_bids(sidecar, where=where)
    extra: dict[str, Any] = {}
    start, injection = sidecar.get("ScanStart"), sidecar.get("InjectionStart")
    if metadata.uptake_time is None and isinstance(start, (int, float)) and isinstance(injection, (int, float)):
        extra["uptake_time"] = (float(start) - float(injection)) / 60.0  # PET-BIDS: seconds from TimeZero
    if metadata.unit is not None and metadata.unit.lower() == "bq/ml":
        extra["unit"] = "Bq/ml"
    if metadata.tracer is not None:  # our vocabulary: FDG | AV45 | TAU
        modality = TRACERS.get(re.sub(r"[^a-z0-9]", "", metadata.tracer.lower()))
        if modality is not None:
            extra["tracer"] = get_modality(modality).tracer
    extra["voxel_size"] = tuple(round(float(v), 4) for v in geometry.spacing_xyz)
    values = {k: _round_value(v) for k, v in {**metadata.to_dict(drop_none=False), **extra}.items()}
    if values["voxel_size"] is not None:
        values["voxel_size"] = tuple(values["voxel_size"])
    result = ImageMetadata(**values)
    sources = {}
    for name in result.to_dict():
        sources[name] = "image header" if name == "voxel_size" else (sidecar_files[-1] if sidecar_files else "sidecar")
    return result, sources


def _rank(image: BidsImage, voxel_volume: float) -> tuple[float, bool, int, str]:
    return (round(voxel_volume, 6), "acq" in image.entities, -image.run, image.path.name)


def discover_bids(root: Path, modalities: list[str] | None = None, run: int | None = None, all_runs: bool = False,
                  ) -> tuple[list[BidsCase], list[Skipped]]:
    """Cases of a BIDS tree (rules in the module docstring) and every file not used, with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise BidsError(f"{root}: no such folder; pass the BIDS dataset's top folder")
    wanted = None if modalities is None else {get_modality(ANAT_SUFFIXES.get(m, m)).name for m in modalities}
    participants = _participants(root)
    skipped: list[Skipped] = []
    cases: list[BidsCase] = []
    subjects = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    if not subjects:
        raise BidsError(f"{root}: no sub-* folders; is this the top folder of a BIDS dataset?")
    for subject_dir in subjects:
        label = subject_dir.name[len("sub-"):]
        sessions_table = {}
        sessions_tsv = subject_dir / f"sub-{label}_sessions.tsv"
        if sessions_tsv.is_file():
            sessions_table = {r["session_id"].removeprefix("ses-"): r for r in read_tsv(sessions_tsv) if r.get("session_id")}
        session_dirs = sorted(p for p in subject_dir.iterdir() if p.is_dir() and p.name.startswith("ses-"))
        for session_dir in session_dirs or [subject_dir]:
            session = session_dir.name[len("ses-"):] if session_dir is not subject_dir else None
            case = BidsCase(case_id_of(label, session), label, session, [])
            subject_values: dict[str, Any] = {}
            if label in participants:
                values, notes = _subject_fields(participants[label], "participants.tsv")
                subject_values.update(values)
                case.subject_sources.update({k: "participants.tsv" for k in values})
                case.notes.extend(notes)
            if session is not None and session in sessions_table:
                values, notes = _subject_fields(sessions_table[session], _relative(root, sessions_tsv))
                values.pop("sex", None)
                subject_values.update(values)
                case.subject_sources.update({k: _relative(root, sessions_tsv) for k in values})
                case.notes.extend(notes)
            try:
                case.subject = SubjectMetadata.from_dict(subject_values, where=f"subject {case.case_id}")
            except MetadataError as error:
                case.notes.append(f"{error}; subject fields left unknown")
            found = _case_images(root, session_dir, label, session, wanted, skipped)
            case.images = _choose_runs(root, found, run, all_runs, skipped, case.notes)
            if not case.images:
                skipped.append(Skipped(_relative(root, session_dir), "no usable image (see the files skipped above)"))
                continue
            cases.append(case)
    return cases, skipped


def _case_images(root: Path, folder: Path, label: str, session: str | None, wanted: set[str] | None,
                 skipped: list[Skipped]) -> list[BidsImage]:
    images = []
    for datatype_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        datatype = datatype_dir.name
        for path in sorted(datatype_dir.iterdir()):
            if not path.name.endswith(NIFTI_ENDINGS) or path.name.startswith("."):
                continue
            where = _relative(root, path)
            parsed = parse_bids_name(path.name)
            if parsed is None:
                skipped.append(Skipped(where, "not a BIDS file name (sub-<label>[_<key>-<value>...]_<suffix>.nii[.gz])"))
                continue
            entities, suffix, _ending = parsed
            if entities.get("sub") != label or entities.get("ses") != session:
                skipped.append(Skipped(where, f"its sub-/ses- entities do not match its folder {case_id_of(label, session)}"))
                continue
            try:
                sidecar, sidecar_files = _inherited_sidecar(root, path, entities, suffix)
            except MetadataError as error:
                skipped.append(Skipped(where, str(error)))
                continue
            modality = _modality_of(datatype, suffix, entities, sidecar)
            if modality is None:
                reason = (f"PET tracer {sidecar.get('TracerName', entities.get('trc'))!r} is not one of the known tracers "
                          f"({', '.join(sorted({v for v in TRACERS.values()}))})" if suffix == "pet"
                          else f"{datatype}/*_{suffix} is not an image type unisyn_v2 knows")
                skipped.append(Skipped(where, reason))
                continue
            if wanted is not None and modality not in wanted:
                skipped.append(Skipped(where, f"{modality} is not among --modalities"))
                continue
            images.append(BidsImage(path, modality, entities, suffix, sidecar, tuple(sidecar_files)))
    return images


def _voxel_volume(path: Path) -> float:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return math.inf
    return float(np.prod(reader.GetSpacing()))


def _choose_runs(root: Path, images: list[BidsImage], run: int | None, all_runs: bool, skipped: list[Skipped],
                 notes: list[str]) -> list[BidsImage]:
    by_modality: dict[str, list[BidsImage]] = {}
    for image in images:
        by_modality.setdefault(image.modality, []).append(image)
    kept: list[BidsImage] = []
    for modality, group in by_modality.items():
        if all_runs or len(group) == 1:
            kept.extend(group)
            continue
        candidates = group
        if run is not None:
            matching = [i for i in group if i.run == run]
            if matching:
                candidates = matching
            else:
                notes.append(f"{modality}: no run {run}; chose by the default rule")
        best = min(candidates, key=lambda i: _rank(i, _voxel_volume(i.path)))
        kept.append(best)
        for other in group:
            if other is not best:
                why = (f"run {other.run} is not --run {run}" if run is not None and other not in candidates else
                       "another " + modality + f" ({best.path.name}) was chosen: smallest voxel volume, then no acq- "
                       "label, then the highest run (rule in unisyn_convert_bids -h); --run N or --all_runs change it")
                skipped.append(Skipped(_relative(root, other.path), why))
    order = {name: index for index, name in enumerate(known_modalities())}
    return sorted(kept, key=lambda i: (order.get(i.modality, len(order)), i.run, i.path.name))


def find_derivative_mask(folder: Path, case: BidsCase) -> Path | None:
    """The case's brain mask in a derivatives folder: ``sub-*/[ses-*/]anat/*desc-brain*_mask.nii[.gz]``
    (e.g. fMRIPrep's ``sub-01_desc-brain_mask.nii.gz``); one without a ``space-`` entity (the subject's own
    space) is preferred, then the name."""
    base = Path(folder) / f"sub-{case.subject_label}"
    if case.session:
        base = base / f"ses-{case.session}"
    found = []
    for path in sorted((base / "anat").glob("*_mask.nii*")) if (base / "anat").is_dir() else []:
        parsed = parse_bids_name(path.name)
        if parsed is None or parsed[1] != "mask" or not parsed[0].get("desc", "").startswith("brain"):
            continue
        if parsed[0].get("sub") != case.subject_label or parsed[0].get("ses") != case.session:
            continue
        found.append(("space" in parsed[0] and parsed[0]["space"] not in ("T1w", "orig"), path.name, path))
    return min(found)[2] if found else None


def place_file(source: Path, destination: Path, link: bool) -> str:
    """Hard-link (or copy) ``source`` to ``destination`` atomically; returns ``linked`` or ``copied``.

    Hard links share the bytes, not a path: the dataset check's rule that paths stay inside the dataset
    holds, and nothing in unisyn_v2 writes into a raw dataset (its writers replace files, never write in them).
    """
    if link:
        temp = destination.with_name(f"{temp_prefix('link')}{destination.name}")
        try:
            os.link(source, temp)
            commit_file(temp, destination)
            return "linked"
        except OSError as error:
            temp.unlink(missing_ok=True)
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
            logger.info("%s: hard link impossible (%s); copying", source, os.strerror(error.errno or 0))
    copy_file_atomic(source, destination)
    return "copied"
