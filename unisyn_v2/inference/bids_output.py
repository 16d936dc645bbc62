"""Predictions as a BIDS derivatives dataset (``unisyn_predict --bids_out DERIV_ROOT``).

Each finished prediction ``<out>/<case>_<target>.nii.gz`` (with its sidecar) is also published as
``DERIV_ROOT/unisyn/sub-<s>/[ses-<t>/]<datatype>/sub-<s>[_ses-<t>][_ce-|_trc-]_desc-synth_<suffix>.nii.gz``
(MRI in ``anat/`` with the BIDS suffix, e.g. ``PDw``; CT in ``ct/`` as ``_ct``; PET in ``pet/`` as
``trc-<tracer>_..._pet``), hard-linked to the flat prediction (copied across file systems), with a
sidecar holding ``Sources`` (BIDS URIs ``bids:raw:<path>`` when the source lies in a BIDS tree, which
``dataset_description.json``'s ``DatasetLinks`` names; else the file path), ``GeneratedBy``, the target
prompt, the source images and prompts, the model and the unit. ``DERIV_ROOT/unisyn/dataset_description.json``
says ``DatasetType: derivative`` with ``GeneratedBy`` and ``SourceDatasets``. Case ids ``sub-01`` and
``sub-01_ses-2`` give subject and session; any other case id becomes subject ``sub-<its letters and digits>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unisyn_v2.dataset.bids_discovery import bids_name_of, is_bids_root, place_file, split_case_id
from unisyn_v2.inference.export import OUTPUT_ENDING, package_version
from unisyn_v2.inference.inputs import GENERATOR_NAME, InputError
from unisyn_v2.io_utils import read_json, write_json_atomic

logger = logging.getLogger(__name__)

PIPELINE = "unisyn"
BIDS_VERSION = "1.9.0"
DESCRIPTION = "synth"


def derivative_path(deriv_root: Path, case_id: str, target_modality: str) -> Path:
    """Where a case's prediction of ``target_modality`` goes in the derivatives tree."""
    subject, session = split_case_id(case_id)
    datatype, suffix, entities = bids_name_of(target_modality)
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    folder = Path(deriv_root) / PIPELINE / f"sub-{subject}" / (f"ses-{session}" if session else "") / datatype
    name = "_".join([prefix, *(f"{k}-{v}" for k, v in entities.items()), f"desc-{DESCRIPTION}", suffix])
    return folder / f"{name}{OUTPUT_ENDING}"


def bids_root_of(path: Path) -> Path | None:
    """The BIDS tree a file lies in (the nearest parent that is one), or None."""
    for parent in Path(path).resolve().parents:
        if (parent / "dataset_description.json").is_file() and is_bids_root(parent):
            return parent
    return None


def _source_uri(path: Path, roots: dict[Path, str]) -> str:
    resolved = Path(path).resolve()
    root = bids_root_of(resolved)
    if root is None:
        return str(resolved)
    key = roots.setdefault(root, "raw" if not roots else f"raw{len(roots) + 1}")
    return f"bids:{key}:{resolved.relative_to(root).as_posix()}"


def derivative_sidecar(flat: dict[str, Any], roots: dict[Path, str]) -> dict[str, Any]:
    """The BIDS-derivative sidecar of one prediction from its flat sidecar."""
    sources = [item["file"] for item in flat.get("source_images", [])]
    return {
        "Description": f"{flat['target_modality']} synthesised by {GENERATOR_NAME} from "
                       + ", ".join(item.get("modality", "?") for item in flat.get("source_images", [])),
        "Sources": [_source_uri(Path(s), roots) for s in sources],
        "GeneratedBy": flat.get("GeneratedBy") or [{"Name": GENERATOR_NAME, "Version": package_version()}],
        "Units": flat.get("unit"),
        "TargetPrompt": flat.get("target_prompt"),
        "TargetMetadata": flat.get("target_metadata"),
        "SourceImages": flat.get("source_images"),
        "Model": flat.get("model"),
        "Settings": flat.get("settings"),
        "Created": flat.get("created"),
    }


def write_dataset_description(deriv_root: Path, roots: dict[Path, str]) -> Path:
    """``DERIV_ROOT/unisyn/dataset_description.json`` (derivative; the source datasets it links)."""
    path = Path(deriv_root) / PIPELINE / "dataset_description.json"
    if path.is_file():
        existing = read_json(path)
        if not isinstance(existing, dict) or existing.get("DatasetType") != "derivative":
            raise InputError(f"{path}: exists and is not a derivative dataset description; pass another --bids_out")
        links = dict(existing.get("DatasetLinks") or {})
        for root, key in list(roots.items()):  # keep the keys earlier runs gave
            known = next((k for k, v in links.items() if v == root.as_uri()), None)
            if known is not None:
                roots[root] = known
    else:
        links = {}
    links.update({key: root.as_uri() for root, key in roots.items()})
    description = {
        "Name": "unisyn_v2 synthesised images", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [{"Name": GENERATOR_NAME, "Version": package_version(),
                         "Description": "metadata-guided cross-modality brain image synthesis (unisyn_predict)"}],
        "SourceDatasets": [{"URL": uri} for uri in sorted(set(links.values()))],
    }
    if links:
        description["DatasetLinks"] = links
    return write_json_atomic(path, description)


def write_bids_derivatives(predictions: Sequence[Path], deriv_root: Path) -> list[Path]:
    """Publish finished flat predictions in the derivatives layout (module docstring); returns the images written."""
    deriv_root = Path(deriv_root)
    if deriv_root.exists() and not deriv_root.is_dir():
        raise InputError(f"--bids_out {deriv_root}: a file, not a folder")
    roots: dict[Path, str] = {}
    staged: list[tuple[Path, Path, dict[str, Any]]] = []
    for image in predictions:
        image = Path(image)
        sidecar = image.with_name(image.name[: -len(OUTPUT_ENDING)] + ".json")
        if not sidecar.is_file():
            raise InputError(f"{image}: no sidecar {sidecar.name}; the prediction is unfinished, rerun unisyn_predict")
        flat = read_json(sidecar)
        target = derivative_path(deriv_root, str(flat["case_id"]), str(flat["target_modality"]))
        staged.append((image, target, flat))
    sidecars = [(image, target, derivative_sidecar(flat, roots)) for image, target, flat in staged]
    write_dataset_description(deriv_root, roots)  # settles the dataset keys the Sources name
    sidecars = [(image, target, derivative_sidecar(flat, roots)) for image, target, flat in staged]
    written = []
    for image, target, data in sidecars:
        target.parent.mkdir(parents=True, exist_ok=True)
        place_file(image, target, link=True)
        write_json_atomic(target.with_name(target.name[: -len(OUTPUT_ENDING)] + ".json"), data)
        written.append(target)
    logger.info("BIDS derivatives: %d image(s) in %s", len(written), deriv_root / PIPELINE)
    return written
