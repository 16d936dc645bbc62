"""Write a raw dataset (a phantom, or any dataset.json dataset on one grid per case) as a BIDS tree
(``unisyn_phantom --bids DIR``), so that ``unisyn_convert_bids`` can be tried, and checked, on data whose
truth is known: converting the export back gives the same images, metadata, subjects and masks.

Layout: ``dataset_description.json`` (raw), ``participants.tsv`` (age, sex), per image
``sub-<label>/<datatype>/sub-<label>[_ce-|_trc-][_run-<n>]_<suffix>.nii.gz`` with its sidecar in BIDS units
(seconds, ``InjectedRadioactivity`` in MBq, PET ``InjectionStart`` 0 and ``ScanStart`` = uptake in
seconds); MRI in ``anat/`` (PD as ``PDw``, T2star as ``T2starw``, T1CE as ``ce-gadolinium_T1w``, SWI as
``swi``), CT in ``ct/`` (``_ct``), PET in ``pet/`` (``trc-<tracer>_pet``); several images of one
modality get ``run-1``, ``run-2``, ... in case order. Brain masks go to
``derivatives/unisyn_phantom/sub-<label>/anat/sub-<label>_desc-brain_mask.nii.gz``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unisyn_v2.dataset.bids_discovery import bids_name_of, split_case_id
from unisyn_v2.dataset.description import load_dataset_description
from unisyn_v2.io_utils import copy_file_atomic, replace_atomic, write_json_atomic
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.9.0"
MASK_PIPELINE = "unisyn_phantom"


def _seconds(ms: float) -> float:
    return float(f"{ms / 1000.0:.10g}")


def bids_sidecar(metadata: ImageMetadata, modality: str) -> dict[str, Any]:
    """Our metadata in BIDS keys and units (the inverse of :func:`unisyn_v2.metadata.bids.metadata_from_bids`)."""
    m = metadata
    out: dict[str, Any] = {}
    pairs = (("MagneticFieldStrength", m.field_strength), ("Manufacturer", m.manufacturer),
             ("ManufacturersModelName", m.scanner_model), ("FlipAngle", m.flip_angle), ("KVP", m.kvp),
             ("ConvolutionKernel", m.reconstruction_kernel))
    out.update({key: value for key, value in pairs if value is not None})
    for key, value in (("RepetitionTime", m.repetition_time), ("EchoTime", m.echo_time), ("InversionTime", m.inversion_time)):
        if value is not None:
            out[key] = _seconds(value)
    if get_modality(modality).family is ModalityFamily.PET:
        out["TracerName"] = m.tracer or get_modality(modality).tracer
        out["ModeOfAdministration"] = "bolus"
        out["TimeZero"] = "00:00:00"
        out["InjectionStart"] = 0
        if m.injected_dose is not None:
            out["InjectedRadioactivity"] = m.injected_dose
            out["InjectedRadioactivityUnits"] = "MBq"
        if m.uptake_time is not None:
            out["ScanStart"] = float(f"{m.uptake_time * 60.0:.10g}")
        if m.unit is not None:
            out["Units"] = m.unit
    return out


def _tsv_value(value: Any) -> str:
    return "n/a" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def export_bids(raw_root: Path, bids_root: Path, overwrite: bool = False, name: str | None = None) -> Path:
    """Write the dataset in ``raw_root`` as a BIDS tree in ``bids_root`` (layout in the module docstring)."""
    raw_root, bids_root = Path(raw_root), Path(bids_root)
    description = load_dataset_description(raw_root, read_sidecars=False)
    if bids_root.exists() and any(bids_root.iterdir()) and not overwrite:
        raise FileExistsError(f"{bids_root} exists and is not empty; choose another folder or pass --overwrite")
    bids_root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(bids_root / "dataset_description.json", {
        "Name": name or description.name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "License": "CC0",
        "GeneratedBy": [{"Name": "unisyn_v2 phantom", "Description": f"BIDS export of {raw_root.name}"}]})
    rows = ["participant_id\tage\tsex"]
    masks = bids_root / "derivatives" / MASK_PIPELINE
    for case in description.cases:
        label, session = split_case_id(case.case_id)
        prefix = f"sub-{label}" + (f"_ses-{session}" if session else "")
        rows.append(f"sub-{label}\t{_tsv_value(case.subject.age)}\t{_tsv_value(case.subject.sex)}")
        folder = bids_root / f"sub-{label}" / (f"ses-{session}" if session else "")
        counts = {m: case.modalities.count(m) for m in case.modalities}
        seen: dict[str, int] = {}
        for image in case.images:
            datatype, suffix, entities = bids_name_of(image.modality)
            seen[image.modality] = seen.get(image.modality, 0) + 1
            parts = [prefix] + [f"{k}-{v}" for k, v in entities.items()]
            if counts[image.modality] > 1:
                parts.append(f"run-{seen[image.modality]}")
            stem = "_".join(parts + [suffix])
            source = description.path_of(image.file)
            ending = ".nii" if image.file.endswith(".nii") else ".nii.gz"
            if not image.file.endswith((".nii", ".nii.gz")):
                raise ValueError(f"{raw_root}: case {case.case_id}, file {image.file}: BIDS holds NIfTI images only")
            copy_file_atomic(source, folder / datatype / f"{stem}{ending}")
            write_json_atomic(folder / datatype / f"{stem}.json", bids_sidecar(image.metadata, image.modality))
        if case.brain_mask is not None:
            mask_folder = masks / f"sub-{label}" / (f"ses-{session}" if session else "") / "anat"
            copy_file_atomic(description.path_of(case.brain_mask), mask_folder / f"{prefix}_desc-brain_mask.nii.gz")
    replace_atomic(bids_root / "participants.tsv", lambda temp: Path(temp).write_text("\n".join(rows) + "\n"))
    if masks.is_dir():
        write_json_atomic(masks / "dataset_description.json", {
            "Name": f"{name or description.name} brain masks", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "unisyn_v2 phantom", "Description": "the phantom's true brain masks"}]})
    logger.info("BIDS export of %s (%d cases) in %s", raw_root, len(description.cases), bids_root)
    return bids_root
