"""Write a raw phantom dataset: cases with random modality subsets, brain masks and dataset.json.

Every case draws from its own random streams (subject, anatomy, session, one per modality), keyed by
the seed and the case index, so a case is the same whatever other cases are requested, and
:class:`PhantomSpec` (written as phantom.json) is all it takes to rebuild and re-render any case.
With ``protocols_per_modality`` N > 1 each MR modality is imaged N times in the same session, repetition
r >= 2 from its own stream keyed by r as well, so repetition 1 is the image a dataset with N = 1 has
and repetition r is the same for every N >= r. With ``lesions`` a fraction of the cases get pathology
from a lesion stream of their own (:mod:`.pathology`); the other cases are the heads and images a
lesion-free phantom has, and every case gets a lesion label map, named in dataset.json as the case's
``lesion_mask`` (training oversamples patches there) and in phantom.json with the case's pathology.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality
from unisyn_v2.metadata.prompts import build_prompt
from unisyn_v2.parallel import map_cases

from .anatomy import brain_mask, simulate_subject
from .pathology import (
    LESION_FILE_SUFFIX, LESION_LABELS, Pathology, draw_pathology, lesion_labels, parse_lesion_kinds, with_pathology_values,
)
from .protocols import (
    DEFAULT_PROTOCOL_RANGES, FIELD_STRENGTHS, MANUFACTURERS, MR_MODELS, PET_MODELS, draw_protocol, get_protocol_ranges,
)
from .simulate import simulate_image
from .tissue_maps import VolumeGeometry, load_tissue_maps, write_nifti
from .tissues import PhantomSubject, draw_subject

logger = logging.getLogger(__name__)

PHANTOM_MODALITIES: tuple[str, ...] = (
    "T1w", "T1CE", "T2w", "PD", "FLAIR", "T2star", "SWI", "CT", "FDG-PET", "AV45-PET", "TAU-PET",
)
# Availability patterns of public multi-modal brain collections (IXI: T1/T2/PD; BraTS: T1/T1CE/T2/FLAIR;
# MR-CT radiotherapy sets; PET/CT; ADNI: T1 + FLAIR + FDG/AV45/tau; SWI studies) with sampling weights.
PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("T1w", "T2w", "PD", "FLAIR"), 0.15), (("T1w", "T1CE", "T2w", "FLAIR"), 0.15), (("T1w", "CT"), 0.12),
    (("T1w", "CT", "FDG-PET"), 0.10), (("T1w", "FDG-PET"), 0.10), (("T1w", "AV45-PET"), 0.08),
    (("T1w", "FLAIR", "FDG-PET", "AV45-PET"), 0.06), (("T1w", "AV45-PET", "TAU-PET"), 0.06),
    (("T1w", "T2star", "SWI"), 0.06), (("T1w", "FLAIR"), 0.04), (("T2w", "FLAIR"), 0.04), (("CT", "FDG-PET"), 0.04),
)
EXTRA_MODALITY_PROBABILITY = 0.04
_SESSION_STREAM, _SUBJECT_STREAM, _ANATOMY_STREAM, _LESION_STREAM, _IMAGE_STREAM = 0, 1, 2, 3, 100
DEFAULT_LESION_FRACTION = 0.5
# Redraws allowed for a repeated protocol identical to an earlier repetition (two images with one prompt
# teach nothing, and dataset.json refuses them); continuous ranges practically never need one.
MAX_PROTOCOL_REDRAWS = 100


SPEC_FILE = "phantom.json"  # beside dataset.json: the settings that rebuild every case (unisyn_render_phantom)
CASES_KEY = "cases"  # phantom.json: per-case records (lesion label map, pathology) of a phantom with lesions
LABELS_KEY = "lesion_labels"  # phantom.json: what each value of the lesion label maps means
_RECORD_KEYS = {CASES_KEY, LABELS_KEY}


@dataclass(frozen=True)
class PhantomSpec:
    """What fixes every case of a phantom dataset, so that case i can be rebuilt and rendered at any protocol.

    ``shape`` is (z, y, x) voxels and ``voxel_size`` (x, y, z) mm (tissue maps replace both);
    ``modalities`` are the ones cases draw from (they steer each case's random availability pattern and
    with it the scanner session); ``protocol_ranges`` names the MR range set
    (:data:`unisyn_v2.phantom.protocols.PROTOCOL_RANGES`); ``protocols_per_modality`` how many images,
    each at its own protocol, every MR modality of a case has (CT and PET: always one). The number of
    cases is not part of it: case i is the same in a dataset of 5 or of 500 cases. ``lesions`` names the
    pathology kinds (:data:`.pathology.LESION_KINDS`; empty: none, the default) a fraction
    ``lesion_fraction`` of the cases carry; ``sinuses`` adds the air sinuses to the anatomy (a phantom.json
    without the key predates them, so :meth:`from_dict` reads its absence as False).
    """

    seed: int
    shape: tuple[int, int, int] = (64, 64, 64)
    voxel_size: tuple[float, float, float] = (3.2, 3.2, 3.2)
    modalities: tuple[str, ...] = PHANTOM_MODALITIES
    protocol_ranges: str = DEFAULT_PROTOCOL_RANGES
    skull_strip: bool = False
    tissue_maps_dir: Path | None = None
    protocols_per_modality: int = 1
    lesions: tuple[str, ...] = ()
    lesion_fraction: float = DEFAULT_LESION_FRACTION
    sinuses: bool = True

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        voxel_size = tuple(float(v) for v in self.voxel_size)
        if len(shape) != 3 or min(shape) < 8:
            raise ValueError(f"shape must be three sizes of at least 8 voxels (got {self.shape})")
        if len(voxel_size) != 3 or min(voxel_size) <= 0.0:
            raise ValueError(f"voxel_size_mm must be three positive sizes in mm (got {self.voxel_size})")
        get_protocol_ranges(self.protocol_ranges)
        repeats = self.protocols_per_modality
        if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
            raise ValueError(f"protocols_per_modality must be a whole number of at least 1 (got {repeats!r})")
        object.__setattr__(self, "protocols_per_modality", int(repeats))
        object.__setattr__(self, "lesions", parse_lesion_kinds(self.lesions))
        fraction = self.lesion_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)) \
                or not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"lesion_fraction must be a number from 0 to 1, the fraction of cases with pathology "
                             f"(got {fraction!r})")
        object.__setattr__(self, "lesion_fraction", float(fraction))
        if not isinstance(self.sinuses, (bool, np.bool_)):
            raise ValueError(f"sinuses must be true or false (got {self.sinuses!r})")
        object.__setattr__(self, "sinuses", bool(self.sinuses))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "voxel_size", voxel_size)
        object.__setattr__(self, "modalities", _validated_modalities(None if self.modalities is None else tuple(self.modalities)))
        object.__setattr__(self, "skull_strip", bool(self.skull_strip))
        if self.tissue_maps_dir is not None:
            object.__setattr__(self, "tissue_maps_dir", Path(self.tissue_maps_dir).resolve())
            if self.lesions:
                raise ValueError("lesions need the procedural anatomy; tissue maps bring their own (give a lesion map there)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``phantom.json`` holds); ``protocols_per_modality`` only when above 1, so a
        one-image-per-modality phantom.json stays what it always was (and older readers still read it)."""
        data: dict[str, Any] = {
            "seed": self.seed, "shape": list(self.shape), "voxel_size": list(self.voxel_size),
            "modalities": list(self.modalities), "protocol_ranges": self.protocol_ranges,
            "skull_strip": self.skull_strip,
            "tissue_maps_dir": None if self.tissue_maps_dir is None else str(self.tissue_maps_dir)}
        if self.protocols_per_modality != 1:
            data["protocols_per_modality"] = self.protocols_per_modality
        if self.lesions:
            data["lesions"] = list(self.lesions)
            data["lesion_fraction"] = self.lesion_fraction
        if self.sinuses:
            data["sinuses"] = True
        return data

    def repetitions(self, modality: str) -> int:
        """How many images of ``modality`` a case has when it has that modality: N for MR, 1 for CT and PET."""
        return self.protocols_per_modality if get_modality(modality).family is ModalityFamily.MRI else 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = SPEC_FILE) -> "PhantomSpec":
        """Parse :meth:`to_dict`'s form; unknown or missing keys are errors naming ``where``.

        ``cases`` and ``lesion_labels`` (the lesion records phantom.json holds beside the spec) are skipped; a
        missing ``sinuses`` means False (written before the sinuses existed)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or "seed" not in data or set(data) - known - _RECORD_KEYS:
            raise ValueError(f"{where}: expected an object with 'seed' and only {', '.join(sorted(known | _RECORD_KEYS))}")
        data = {k: v for k, v in data.items() if k not in _RECORD_KEYS}
        data.setdefault("sinuses", False)
        if "lesions" in data and (not isinstance(data["lesions"], list) or not all(isinstance(k, str) for k in data["lesions"])):
            raise ValueError(f"{where}: lesions must be a list of kinds (got {data['lesions']!r})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None


@dataclass(frozen=True)
class PhantomAnatomy:
    """A case's head: fractional tissue maps, the subject's physical parameters, brain mask and grid."""

    tissues: dict[str, np.ndarray]
    subject: PhantomSubject
    mask: np.ndarray
    geometry: VolumeGeometry
    pathology: Pathology | None = None  # None: the phantom has no lesions; empty kinds: this case has none

    def lesion_labels(self) -> np.ndarray:
        """The lesion label map (uint8, :data:`.pathology.LESION_LABELS`)."""
        return lesion_labels(self.tissues)


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs to write one case."""

    output_dir: Path
    num_cases: int
    spec: PhantomSpec
    complete: bool = False


def case_rng(seed: int, case_index: int, stream: int) -> np.random.Generator:
    """Independent random stream ``stream`` of case ``case_index``."""
    return np.random.default_rng([int(seed), int(case_index), int(stream)])


def choose_modalities(rng: np.random.Generator, allowed: Sequence[str]) -> list[str]:
    """A random availability pattern restricted to ``allowed``, topped up to at least two modalities."""
    allowed = [m for m in PHANTOM_MODALITIES if m in set(allowed)]
    weights = np.array([w for _, w in PATTERNS])
    pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=weights / weights.sum()))][0]
    chosen = {m for m in pattern if m in allowed}
    chosen |= {m for m in allowed if rng.random() < EXTRA_MODALITY_PROBABILITY}
    while len(chosen) < min(2, len(allowed)):
        rest = [m for m in allowed if m not in chosen]
        chosen.add("T1w" if "T1w" in rest and rng.random() < 0.9 else str(rng.choice(rest)))
    return [m for m in allowed if m in chosen]


def _session(rng: np.random.Generator) -> dict[str, Any]:
    """Scanner fields shared by the images of one visit (one MR scanner, one PET scanner)."""
    field = float(rng.choice(FIELD_STRENGTHS, p=[0.4, 0.6]))
    mr_vendor, ct_vendor, pet_vendor = (str(rng.choice(MANUFACTURERS)) for _ in range(3))
    return {
        ModalityFamily.MRI: {"field_strength": field, "manufacturer": mr_vendor,
                             "scanner_model": str(rng.choice(MR_MODELS[(mr_vendor, field)]))},
        ModalityFamily.CT: {"manufacturer": ct_vendor},
        ModalityFamily.PET: {"manufacturer": pet_vendor, "scanner_model": str(rng.choice(list(PET_MODELS[pet_vendor])))},
    }


@lru_cache(maxsize=2)
def _cached_maps(directory: Path) -> list[tuple[dict[str, np.ndarray], VolumeGeometry]]:
    return load_tissue_maps(directory)


def case_anatomy(spec: PhantomSpec, case_index: int) -> PhantomAnatomy:
    """The head of case ``case_index`` (0-based): its own subject and anatomy streams, or tissue maps.

    With ``spec.lesions`` its lesion stream decides whether it has pathology (``lesion_fraction``), where,
    and the subject's values of the pathology classes; without pathology it is the lesion-free head."""
    subject = draw_subject(case_rng(spec.seed, case_index, _SUBJECT_STREAM))
    pathology = None
    if spec.lesions:
        rng = case_rng(spec.seed, case_index, _LESION_STREAM)
        pathology = draw_pathology(rng, spec.lesions, spec.lesion_fraction)
        if pathology.kinds:
            subject = with_pathology_values(subject, rng)
    if spec.tissue_maps_dir is not None:
        sets = _cached_maps(spec.tissue_maps_dir)
        tissues, geometry = sets[case_index % len(sets)]
    else:
        tissues = simulate_subject(case_rng(spec.seed, case_index, _ANATOMY_STREAM), spec.shape, spec.voxel_size,
                                   subject=subject, pathology=pathology, sinuses=spec.sinuses)
        geometry = VolumeGeometry.centred(spec.shape, spec.voxel_size)
    return PhantomAnatomy(tissues, subject, brain_mask(tissues, exclude_extracerebral=spec.sinuses), geometry, pathology)


def case_session(spec: PhantomSpec, case_index: int) -> tuple[list[str], dict[ModalityFamily, dict[str, Any]]]:
    """The modalities case ``case_index`` has (random availability pattern) and its scanners per family."""
    rng = case_rng(spec.seed, case_index, _SESSION_STREAM)
    modalities = choose_modalities(rng, spec.modalities)
    return modalities, _session(rng)


def image_stream(spec: PhantomSpec, anatomy: PhantomAnatomy, case_index: int, modality: str,
                 session: dict[ModalityFamily, dict[str, Any]], repetition: int = 1,
                 ) -> tuple[ImageMetadata, np.random.Generator]:
    """The case's own protocol of ``modality`` and its image stream, left where the simulation draws next.

    Every modality has its own stream whether or not the case has that image, so this is also the
    protocol a case would have had; simulating from the returned stream reproduces the written image.
    ``repetition`` r >= 2 (MR only) is the r-th image of the modality in the same session: its own stream
    ``[seed, case, modality stream, r]``, redrawn (from that stream) while its protocol equals an earlier
    repetition's, so it depends neither on the dataset's ``protocols_per_modality`` nor changes image 1.
    """
    name = get_modality(modality).name
    if name not in PHANTOM_MODALITIES:
        raise ValueError(f"the phantom cannot simulate {name}; it simulates {', '.join(PHANTOM_MODALITIES)}")
    family = get_modality(name).family
    if isinstance(repetition, bool) or not isinstance(repetition, (int, np.integer)) or repetition < 1:
        raise ValueError(f"case {case_index + 1}, {name}: repetition must be a whole number of at least 1 (got {repetition!r})")
    if repetition > 1 and family is not ModalityFamily.MRI:
        raise ValueError(f"case {case_index + 1}, {name}: repetition {repetition} asked, but {family.value} images "
                         "are taken once per case (repetitions are for MR protocols)")
    stream = _IMAGE_STREAM + PHANTOM_MODALITIES.index(name)
    if repetition == 1:
        rng = case_rng(spec.seed, case_index, stream)
        metadata = draw_protocol(name, rng, voxel_size=anatomy.geometry.spacing, ranges=spec.protocol_ranges,
                                 **session[family])
        return metadata, rng
    earlier = {build_prompt(name, image_stream(spec, anatomy, case_index, name, session, r)[0])
               for r in range(1, repetition)}
    rng = np.random.default_rng([int(spec.seed), int(case_index), stream, int(repetition)])
    for _ in range(MAX_PROTOCOL_REDRAWS):
        metadata = draw_protocol(name, rng, voxel_size=anatomy.geometry.spacing, ranges=spec.protocol_ranges,
                                 **session[family])
        if build_prompt(name, metadata) not in earlier:  # what a model sees must tell the images apart
            return metadata, rng
    raise ValueError(f"case {case_index + 1}, {name}: protocol ranges {spec.protocol_ranges} gave no protocol for "
                     f"repetition {repetition} that differs from the earlier ones in {MAX_PROTOCOL_REDRAWS} draws; "
                     "ask for fewer protocols_per_modality")


def image_file_name(case_id: str, modality: str, repetition: int = 1) -> str:
    """``sub-001_T2w.nii.gz``; repetition r >= 2 ``sub-001_run-2_T2w.nii.gz`` (BIDS: the run entity before the
    modality suffix, so the file still ends in its modality)."""
    run = "" if repetition == 1 else f"_run-{int(repetition)}"
    return f"{case_id}{run}_{get_modality(modality).name}.nii.gz"


def render_image(spec: PhantomSpec, anatomy: PhantomAnatomy, modality: str, metadata: ImageMetadata,
                 rng: np.random.Generator, *, noise: bool = True, bias: bool = True, blur: bool = True) -> np.ndarray:
    """Simulate one image of a case (float32, (z, y, x)), skull-stripped as the spec says."""
    image = simulate_image(modality, anatomy.tissues, metadata, anatomy.subject, rng, noise=noise, bias=bias, blur=blur)
    if spec.skull_strip:  # as the papers' preprocessing: CT background at the window floor
        image[anatomy.mask == 0] = -1024.0 if get_modality(modality).family is ModalityFamily.CT else 0.0
    return image.astype(np.float32)


def lesion_file_name(case_id: str) -> str:
    """``sub-001/sub-001_lesions.nii.gz``: the case's lesion label map, relative to the dataset folder."""
    return f"{case_id}/{case_id}{LESION_FILE_SUFFIX}"


def _write_case(context: _Context, case_index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Simulate and write one case; returns its dataset.json entry and, with lesions, its phantom.json record."""
    spec = context.spec
    width = max(3, len(str(context.num_cases)))
    case_id = f"sub-{case_index + 1:0{width}d}"
    anatomy = case_anatomy(spec, case_index)
    modalities, session = case_session(spec, case_index)
    if context.complete:  # drawn anyway, so the other random streams are the same as without ``complete``
        modalities = list(spec.modalities)
    folder = context.output_dir / case_id
    write_nifti(anatomy.mask, anatomy.geometry, folder / f"{case_id}_brainmask.nii.gz")
    record = None
    if anatomy.pathology is not None:
        labels = anatomy.lesion_labels()
        write_nifti(labels, anatomy.geometry, context.output_dir / lesion_file_name(case_id))
        counts = np.bincount(labels.ravel(), minlength=len(LESION_LABELS))
        record = {"lesions": lesion_file_name(case_id), "pathology": list(anatomy.pathology.kinds),
                  "voxels": {LESION_LABELS[k]: int(counts[k]) for k in range(1, len(LESION_LABELS)) if counts[k]}}
        if anatomy.pathology.infarct is not None:
            record["infarct_territory"] = anatomy.pathology.infarct.territory
    images = []
    for name in modalities:
        for repetition in range(1, spec.repetitions(name) + 1):
            metadata, rng = image_stream(spec, anatomy, case_index, name, session, repetition)
            image = render_image(spec, anatomy, name, metadata, rng)
            relative = f"{case_id}/{image_file_name(case_id, name, repetition)}"
            write_nifti(image, anatomy.geometry, context.output_dir / relative)
            images.append({"file": relative, "modality": name, "metadata": metadata.to_dict()})
    entry = {"id": case_id, "subject": anatomy.subject.metadata().to_dict(),
             "brain_mask": f"{case_id}/{case_id}_brainmask.nii.gz", "images": images}
    if record is not None:
        entry["lesion_mask"] = record["lesions"]
    return entry, record


def _validated_modalities(modalities: Sequence[str] | None) -> tuple[str, ...]:
    if modalities is None:
        return PHANTOM_MODALITIES
    names = {get_modality(m).name for m in modalities}
    unsupported = sorted(names - set(PHANTOM_MODALITIES))
    if unsupported:
        raise ValueError(f"the phantom cannot simulate {', '.join(unsupported)}; "
                         f"it simulates {', '.join(PHANTOM_MODALITIES)}")
    if len(names) < 2:
        raise ValueError(f"every case needs at least two modalities; got {sorted(names)}")
    return tuple(m for m in PHANTOM_MODALITIES if m in names)


def generate_phantom_dataset(output_dir: Path, num_cases: int, seed: int, shape: tuple[int, int, int] = (64, 64, 64),
                             voxel_size_mm: tuple[float, float, float] = (3.2, 3.2, 3.2),
                             modalities: Sequence[str] | None = None, skull_strip: bool = False,
                             tissue_maps_dir: Path | None = None, overwrite: bool = False, name: str = "Phantom",
                             num_processes: int = 1, progress: bool = False, complete: bool = False,
                             protocol_ranges: str = DEFAULT_PROTOCOL_RANGES, protocols_per_modality: int = 1,
                             lesions: str | Sequence[str] | None = None, lesion_fraction: float = DEFAULT_LESION_FRACTION,
                             sinuses: bool = True) -> Path:
    """Write a raw dataset folder (images, brain masks, dataset.json, phantom.json) and return it.

    ``shape`` is (z, y, x) voxels and ``voxel_size_mm`` (x, y, z); with ``tissue_maps_dir`` the maps fix
    both. ``complete`` gives every case every allowed modality (paired data, e.g. for the demo and
    benchmarks) instead of a random clinical availability pattern. ``protocol_ranges`` names the MR
    protocol range set (``clinical``, the default, or ``wide``; see
    :data:`unisyn_v2.phantom.protocols.PROTOCOL_RANGES`). ``protocols_per_modality`` N > 1 images every MR
    modality of a case N times at independently drawn protocols of the set (one session: field strength
    and vendor shared; files ``sub-001_T2w.nii.gz``, ``sub-001_run-2_T2w.nii.gz``, ...), so a model sees
    the same head at several TE/TR/TI/flip angles instead of each protocol confounded with its subject;
    N = 1 writes exactly what it always did. ``lesions`` (``"infarct,wmh,tumour"``, ``"all"`` or a list)
    gives a fraction ``lesion_fraction`` of the cases pathology and every case a label map
    ``<case>/<case>_lesions.nii.gz`` (:data:`.pathology.LESION_LABELS`), the case's ``lesion_mask`` in
    dataset.json and listed under ``cases`` in phantom.json; without lesions every byte is what it was before
    they existed.
    ``sinuses=False`` draws the heads without air sinuses, as datasets made before them. ``phantom.json`` records the settings that
    rebuild any case (:func:`unisyn_v2.phantom.render_subject`). An existing non-empty ``output_dir`` is
    refused unless ``overwrite``; overwriting replaces only the files this function writes and deletes nothing.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir)
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1 (got {num_cases})")
    spec = PhantomSpec(seed, shape, voxel_size_mm, PHANTOM_MODALITIES if modalities is None else tuple(modalities),
                       protocol_ranges, skull_strip, tissue_maps_dir, protocols_per_modality,
                       parse_lesion_kinds(lesions), lesion_fraction, sinuses)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite=True")
    maps_dir = spec.tissue_maps_dir
    if maps_dir is not None:
        _cached_maps(maps_dir)  # fail before writing anything if the maps are unusable
        logger.info("anatomy from tissue maps in %s; their grid replaces shape and voxel_size_mm", maps_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    context = _Context(output_dir, int(num_cases), spec, complete)
    written = map_cases(_write_case, context, list(range(num_cases)), num_processes, progress, "phantom")
    cases = [entry for entry, _ in written]
    anatomy = (f"tissue maps from {maps_dir}" if maps_dir is not None
               else f"shape {list(spec.shape)} (z, y, x), voxel size {list(spec.voxel_size)} mm (x, y, z)")
    description = (f"Physics-based multi-modal brain phantom (unisyn_v2.phantom): seed {seed}, {anatomy}, "
                   f"protocol ranges {spec.protocol_ranges}"
                   + (f", {spec.protocols_per_modality} protocols per MR modality" if spec.protocols_per_modality > 1 else "")
                   + (f", pathology ({', '.join(spec.lesions)}) in {spec.lesion_fraction:.0%} of cases, lesion label maps "
                      f"as lesion_mask (classes in {SPEC_FILE})" if spec.lesions else "")
                   + (", skull-stripped." if skull_strip else "."))
    dataset = {"name": name, "description": description, "reference": "unisyn_v2.phantom", "licence": "CC0-1.0",
               "cases": cases}
    record = spec.to_dict()
    if spec.lesions:
        record[CASES_KEY] = {entry["id"]: lesions for entry, lesions in written}
        record[LABELS_KEY] = {str(k): v for k, v in LESION_LABELS.items()}
    write_json_atomic(output_dir / SPEC_FILE, record)
    write_json_atomic(output_dir / "dataset.json", dataset)
    n_images = sum(len(c["images"]) for c in cases)
    logger.info("wrote %d cases (%d images) to %s in %.1f s", len(cases), n_images, output_dir,
                time.perf_counter() - started)
    return output_dir
