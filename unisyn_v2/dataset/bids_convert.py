"""A BIDS tree in, a raw unisyn_v2 dataset out (``unisyn_convert_bids``).

The cases, images, metadata and run choice come from :mod:`unisyn_v2.dataset.bids_discovery`; here every
image of a case is rigidly registered to the reference modality and resampled onto its grid (the transform
saved beside the case), a brain mask is derived or taken from derivatives, files are linked or copied (the
BIDS tree is never written), and the report says per case what was found, where each field came from and
the registration metric before and after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from unisyn_v2.dataset.coregistration import (
    auto_brain_mask, max_displacement_mm, register_rigid, resample_onto, write_transform,
)
from unisyn_v2.dataset.image_io import Geometry, ImageReadError, read_image, write_image
from unisyn_v2.io_utils import write_json_atomic
from unisyn_v2.metadata.fields import MetadataError
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

logger = logging.getLogger(__name__)

from unisyn_v2.dataset.bids_discovery import (
    NIFTI_ENDINGS, REFERENCE_ORDER, BidsCase, BidsError, BidsImage, Skipped, _relative, bids_name_of, case_id_of,
    discover_bids, find_derivative_mask, image_metadata, is_bids_root, parse_bids_name, place_file, split_case_id,
)

# ----------------------------------------------------------------------------- conversion
@dataclass
class ConversionSettings:
    """What ``unisyn_convert_bids`` was asked to do."""

    modalities: list[str] | None = None
    reference: str = "T1w"
    link: bool = True
    run: int | None = None
    all_runs: bool = False
    brain_mask: str | None = None  # None, "auto", or a derivatives folder
    #: a registration moving no point of the reference's head by more than this (voxels) is registration noise:
    #: the image keeps the headers' alignment (and its voxels, when it already is on the reference grid)
    min_correction_voxels: float = 0.25
    threads: int | None = None
    seed: int = 0


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing_xyz)
    image.SetOrigin(geometry.origin_xyz)
    image.SetDirection(geometry.direction)
    return image


def _ending(path: Path) -> str:
    return next(e for e in NIFTI_ENDINGS if path.name.endswith(e))


def _output_name(case_id: str, image: BidsImage, numbered: bool) -> str:
    run = f"_run-{image.run}" if numbered else ""
    return f"{case_id}{run}_{image.modality}"


def _background(modality: str) -> float:
    return -1024.0 if get_modality(modality).family is ModalityFamily.CT else 0.0


def convert_case(root: Path, case: BidsCase, output: Path, settings: ConversionSettings,
                 skipped: list[Skipped]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Write one case (images on the reference grid, transforms, mask); returns (dataset.json entry, report)."""
    report: dict[str, Any] = {"case": case.case_id, "subject": case.subject.to_dict(), "subject_from": case.subject_sources,
                              "notes": list(case.notes), "images": []}
    usable: list[tuple[BidsImage, np.ndarray, Geometry]] = []
    for image in case.images:
        where = _relative(root, image.path)
        try:
            array, geometry = read_image(image.path)
            metadata, sources = image_metadata(image.sidecar, list(image.sidecar_files), geometry, where)
            problems = metadata.problems(image.modality)
            if problems:
                raise MetadataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        except (ImageReadError, MetadataError) as error:
            skipped.append(Skipped(where, str(error).removeprefix(f"{image.path}: ")))
            continue
        usable.append((replace(image, metadata=metadata, metadata_sources=sources), array, geometry))
    if len(usable) < 2:
        skipped.append(Skipped(case.case_id, f"{len(usable)} readable image(s) with plausible metadata; synthesis needs "
                                             "at least 2 modalities per case"))
        return None, report
    modalities = [i.modality for i, _, _ in usable]
    wanted = get_modality(settings.reference).name
    reference_modality = wanted if wanted in modalities else next(
        (m for m in REFERENCE_ORDER if m in modalities), modalities[0])
    if reference_modality != wanted:
        report["notes"].append(f"no {wanted}: {reference_modality} is the reference")
    ref_index = modalities.index(reference_modality)
    ref_image, ref_array, ref_geometry = usable[ref_index]
    reference = _to_sitk(ref_array, ref_geometry)
    report["reference"] = _relative(root, ref_image.path)
    folder = output / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    counts = {m: modalities.count(m) for m in modalities}
    head = auto_brain_mask(reference, get_modality(reference_modality).family.value)
    limit = settings.min_correction_voxels * min(ref_geometry.spacing_xyz)
    entries = []
    aligned: dict[str, np.ndarray] = {}
    for image, array, geometry in usable:
        stem = _output_name(case.case_id, image, counts[image.modality] > 1)
        item: dict[str, Any] = {"modality": image.modality, "source": _relative(root, image.path),
                                "sidecars": list(image.sidecar_files), "metadata": image.metadata.to_dict(),
                                "metadata_from": image.metadata_sources}
        same_grid = geometry.matches(ref_geometry)
        if image is ref_image:
            relative = f"{case.case_id}/{stem}{_ending(image.path)}"
            item.update(output=relative, action=place_file(image.path, output / relative, settings.link), role="reference")
            aligned[image.modality] = array
        else:
            moving = _to_sitk(array, geometry)
            result = register_rigid(reference, moving, seed=settings.seed, threads=settings.threads)
            shift = max_displacement_mm(result.transform, reference, head)
            applied = shift > limit
            transform = result.transform if applied else sitk.Euler3DTransform()
            item["registration"] = {
                "metric": "Mattes mutual information (lower is better)", "before": round(result.metric_before, 5),
                "after": round(result.metric_after, 5), "initialisation": result.initialisation,
                "iterations": result.iterations, **result.parameters(), "max_displacement_mm": round(shift, 3),
                "applied": applied,
                "why": (f"moves the head by up to {shift:.2f} mm, above {settings.min_correction_voxels:g} voxel "
                        f"({limit:.2f} mm)" if applied else
                        f"moves the head by at most {shift:.2f} mm, within {settings.min_correction_voxels:g} voxel "
                        f"({limit:.2f} mm): registration noise, the headers' alignment is kept")}
            transform_file = f"{case.case_id}/{stem}_to-{reference_modality}.tfm"
            write_transform(transform, output / transform_file)
            item["transform"] = transform_file
            if same_grid and not applied:
                relative = f"{case.case_id}/{stem}{_ending(image.path)}"
                item["action"] = place_file(image.path, output / relative, settings.link)
                aligned[image.modality] = array
            else:
                relative = f"{case.case_id}/{stem}.nii.gz"
                resampled = sitk.GetArrayFromImage(resample_onto(moving, reference, transform,
                                                                 default_value=_background(image.modality)))
                write_image(output / relative, resampled, ref_geometry)
                item["action"] = "resampled onto the reference grid (linear)"
                aligned.setdefault(image.modality, resampled)
            item["output"] = relative
        entries.append({"file": item["output"], "modality": image.modality, "metadata": image.metadata.to_dict()})
        report["images"].append(item)
    entry: dict[str, Any] = {"id": case.case_id, "subject": case.subject.to_dict(), "images": entries}
    mask_path = _brain_mask(root, case, settings, reference, ref_geometry, aligned, output, report)
    if mask_path is not None:
        entry["brain_mask"] = mask_path
    return entry, report


def _brain_mask(root: Path, case: BidsCase, settings: ConversionSettings, reference: sitk.Image, geometry: Geometry,
                aligned: dict[str, np.ndarray], output: Path, report: dict[str, Any]) -> str | None:
    relative = f"{case.case_id}/{case.case_id}_brainmask.nii.gz"
    if settings.brain_mask is None:
        return None
    if settings.brain_mask == "auto":
        source = next((m for m in ("CT", "FDG-PET", "AV45-PET", "TAU-PET") if m in aligned), None)
        if source is None:
            source = get_modality(next(iter(aligned))).name  # the reference (first placed)
        family = get_modality(source).family.value
        mask = auto_brain_mask(_to_sitk(aligned[source].astype(np.float32), geometry), family)
        write_image(output / relative, mask, geometry, dtype=np.uint8)
        report["brain_mask"] = {"method": "auto (unisyn_v2.dataset.coregistration.auto_brain_mask)", "from": source,
                                "voxels": int(mask.sum()), "output": relative}
        return relative
    found = find_derivative_mask(Path(settings.brain_mask), case)
    if found is None:
        report["notes"].append(f"no brain mask for {case.case_id} in {settings.brain_mask} "
                               "(sub-*/[ses-*/]anat/*desc-brain*_mask.nii[.gz]); the case has none")
        return None
    array, mask_geometry = read_image(found)
    if mask_geometry.matches(geometry):
        action = place_file(found, output / relative, settings.link)
    else:
        resampled = resample_onto(_to_sitk((array > 0).astype(np.uint8), mask_geometry), reference, nearest=True)
        write_image(output / relative, sitk.GetArrayFromImage(resampled), geometry, dtype=np.uint8)
        action = "resampled onto the reference grid (nearest neighbour)"
    report["brain_mask"] = {"method": "derivatives", "from": str(found), "action": action, "output": relative}
    return relative


@dataclass
class ConversionReport:
    """What the converter did: per case the images, where their metadata came from, the registration
    metric before and after; and every file skipped with the reason."""

    output: Path
    cases: list[dict[str, Any]]
    skipped: list[Skipped]
    problems: list[str] = field(default_factory=list)  # the dataset check's findings on the result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``conversion_report.json``)."""
        return {"output": str(self.output), "cases": self.cases, "skipped": [s.to_dict() for s in self.skipped],
                "verification_problems": self.problems}

    def summary_lines(self) -> list[str]:
        """A short human-readable summary."""
        lines = []
        for case in self.cases:
            parts = []
            for image in case["images"]:
                reg = image.get("registration")
                text = image["modality"]
                if reg:
                    text += f" (MI {reg['before']:.3f} -> {reg['after']:.3f}, {reg['max_displacement_mm']:.1f} mm"
                    text += ", applied)" if reg["applied"] else ", kept)"
                parts.append(text)
            lines.append(f"{case['case']}: {', '.join(parts)}" + (f"; mask {case['brain_mask']['method']}"
                                                                 if "brain_mask" in case else ""))
        for item in self.skipped:
            lines.append(f"skipped {item.path}: {item.reason}")
        return lines


def convert_bids(bids_root: Path, output: Path, name: str, settings: ConversionSettings | None = None,
                 overwrite: bool = False, description: str | None = None) -> ConversionReport:
    """Convert a BIDS tree into the raw dataset folder ``output`` (``DatasetXXX_Name``); the BIDS files are
    only read (hard-linked or copied). Writes ``dataset.json`` last and ``conversion_report.json`` beside it,
    then runs the dataset check on the result."""
    from unisyn_v2.dataset.integrity import verify_dataset_integrity

    settings = settings or ConversionSettings()
    bids_root, output = Path(bids_root), Path(output)
    get_modality(settings.reference)  # an unknown name fails before any work
    if settings.brain_mask not in (None, "auto") and not Path(settings.brain_mask).is_dir():
        raise BidsError(f"--brain_mask {settings.brain_mask}: not 'auto' and not a derivatives folder")
    if output.resolve() == bids_root.resolve() or output.resolve().is_relative_to(bids_root.resolve()):
        raise BidsError(f"output {output} is inside the BIDS tree {bids_root}; the converter never writes there")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise BidsError(f"{output} exists and is not empty; pass --overwrite to replace the files the converter writes")
    cases, skipped = discover_bids(bids_root, settings.modalities, settings.run, settings.all_runs)
    if not cases:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
        raise BidsError(f"{bids_root}: no usable images ({reasons or 'nothing found'})")
    output.mkdir(parents=True, exist_ok=True)
    entries, reports = [], []
    for index, case in enumerate(cases, 1):
        entry, report = convert_case(bids_root, case, output, settings, skipped)
        reports.append(report)
        if entry is not None:
            entries.append(entry)
        logger.info("case %d/%d %s: %s", index, len(cases), case.case_id,
                    ", ".join(i["modality"] for i in report["images"]) or "skipped")
    if not entries:
        raise BidsError(f"{bids_root}: no case could be converted; see the reasons logged above")
    dataset = {"name": name, "description": description or f"converted from the BIDS dataset {bids_root.resolve()} "
               f"by unisyn_convert_bids (reference {settings.reference}, rigid Mattes-MI co-registration)",
               "cases": entries}
    result = ConversionReport(output, reports, skipped)
    write_json_atomic(output / "dataset.json", dataset)
    result.problems = [str(p) for p in verify_dataset_integrity(output)]
    write_json_atomic(output / "conversion_report.json", result.to_dict())
    return result


__all__ = ["BidsCase", "BidsError", "BidsImage", "ConversionReport", "ConversionSettings", "Skipped", "bids_name_of",
           "case_id_of", "convert_bids", "discover_bids", "find_derivative_mask", "is_bids_root", "parse_bids_name",
           "split_case_id"]
