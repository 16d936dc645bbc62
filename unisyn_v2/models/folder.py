"""Reading a trained model folder back: what the predictor and ``unisyn_install_model`` call.

The layout (names of the folder and its files) is :mod:`unisyn_v2.contracts.model_layout`'s, written by
``TrainerBase.write_model_folder`` and the synthesis trainers. :func:`load_trained_model` rebuilds the network with the trainer class's static
``build_network_from_plans`` (the same function training used) and loads the weights.

A model folder is data, never code: trainer.json may only name a registered trainer
(:func:`unisyn_v2.models.registry.resolve_trainer_class`), and :func:`validate_trainer_info` and
:func:`validate_model_file` check what ``unisyn_install_model`` installs against the layout below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unisyn_v2.contracts.model_layout import (
    DATASET_FILE, FINAL_CHECKPOINT, FINGERPRINT_FILE, FOLD_PREFIX, PLANS_FILE, PROGRESS_PLOT, TEXT_ENCODER_FOLDER,
    TRAINER_FILE, TRAINING_LOG, VALIDATION_FOLDER, ModelLayout,
)
from unisyn_v2.contracts.plans import MAX_PATCH_EDGE, Plans
from unisyn_v2.io_utils import confined_path, read_json
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.networks.conditioners import OneHotConditioner, TextConditioner
from unisyn_v2.networks.qmri_head import PhysicsTextConditioner
from unisyn_v2.networks.text_artifact import load_text_encoder_artifact
from unisyn_v2.models.registry import registered_trainer_path, resolve_trainer_class
from unisyn_v2.models.weights import load_checkpoint, load_network_weights
from unisyn_v2.networks.slice_adapter import volume_network

_FOLD = rf"{re.escape(FOLD_PREFIX)}(?:\d+|all)"
_ARTIFACT = rf"{re.escape(TEXT_ENCODER_FOLDER)}/(?:config\.json|tokenizer\.json|weights\.pt)"
_NAME = r"[^/\\\x00]*[^/\\\x00.][^/\\\x00]*"  # one path component, not hidden-only dots
_VALIDATION = re.escape(VALIDATION_FOLDER)
#: Every file a model folder may hold (paths relative to it); anything else is not part of a model.
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    *(re.escape(name) for name in (PLANS_FILE, DATASET_FILE, FINGERPRINT_FILE, TRAINER_FILE)), _ARTIFACT,
    rf"{_FOLD}/{_ARTIFACT}", rf"{_FOLD}/(?!\.){_NAME}\.pth", rf"{_FOLD}/{re.escape(TRAINING_LOG)}",
    rf"{_FOLD}/{re.escape(PROGRESS_PLOT)}", rf"{_FOLD}/(?:{_VALIDATION}/)?\w+\.json",
    rf"{_FOLD}/{_VALIDATION}/(?!\.){_NAME}\.png",  # summaries, split and guard records
)
_MODEL_FILE = re.compile("|".join(f"(?:{p})" for p in MODEL_FILE_PATTERNS))
CONDITIONING_KINDS = ("none", "onehot", "text", "text_physics")


def is_model_file(relative: str) -> bool:
    """True for a path (relative to a model folder, '/'-separated) that belongs in a model folder."""
    return _MODEL_FILE.fullmatch(relative) is not None


def read_trainer_info(model_folder: Path) -> dict[str, Any]:
    """``trainer.json`` of a model folder, validated (FileNotFoundError naming the folder)."""
    path = ModelLayout(model_folder).trainer_info
    if not path.is_file():
        raise FileNotFoundError(f"{model_folder} is not a trained model folder (no trainer.json)")
    return validate_trainer_info(read_json(path), str(path))


def validate_trainer_info(data: Any, source: str, trusted_trainers: Collection[str] = ()) -> dict[str, Any]:
    """Check a trainer.json against its schema; errors name ``source`` and the field.

    ``trainer_class`` must be a registered trainer (nothing is imported here), or exactly one of
    ``trusted_trainers``: dotted paths the user named on the command line.
    """
    def fail(field: str, message: str) -> None:
        raise ValueError(f"{source}: field {field}: {message}")

    def string_list(field: str, value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            fail(field, f"must be a list of non-empty strings (got {value!r})")

    if not isinstance(data, dict):
        raise ValueError(f"{source}: must be a JSON object (got {type(data).__name__})")
    if data.get("trainer_class") not in trusted_trainers:
        registered_trainer_path(data.get("trainer_class"), f"{source}: field trainer_class")
    if not isinstance(data.get("configuration"), str) or not data["configuration"]:
        fail("configuration", f"must be a non-empty string (got {data.get('configuration')!r})")
    for key in ("trainer_name", "dataset_name", "plans_name"):
        if key in data and not isinstance(data[key], str):
            fail(key, f"must be a string (got {data[key]!r})")
    network = data.get("network")
    if network is not None and (not isinstance(network, dict) or not isinstance(network.get("kind"), str)
                                or not isinstance(network.get("kwargs", {}), dict)):
        fail("network", "must be an object with a string 'kind' (and an object 'kwargs')")
    conditioning = data.get("conditioning")
    if conditioning is not None:
        if not isinstance(conditioning, dict) or conditioning.get("kind", "none") not in CONDITIONING_KINDS:
            fail("conditioning", f"must be an object whose kind is one of {', '.join(CONDITIONING_KINDS)} (got {conditioning!r})")
        if not isinstance(conditioning.get("text_encoder", ""), str):
            fail("conditioning.text_encoder", "must be a relative folder path (a string)")
        if "modalities" in conditioning:
            string_list("conditioning.modalities", conditioning["modalities"])
    if data.get("is_slab") is not None and not isinstance(data["is_slab"], bool):
        fail("is_slab", f"must be true or false (got {data['is_slab']!r})")
    patch = data.get("patch_size")
    if patch is not None and (not isinstance(patch, list) or len(patch) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PATCH_EDGE for v in patch)):
        fail("patch_size", f"must be 3 integers in 1-{MAX_PATCH_EDGE} (got {patch!r})")
    axes = data.get("mirror_axes")
    if axes is not None and (not isinstance(axes, list) or not all(v in (0, 1, 2) and not isinstance(v, bool) for v in axes)):
        fail("mirror_axes", f"must be a list of axes 0, 1, 2 (got {axes!r})")
    if data.get("modalities") is not None:
        string_list("modalities", data["modalities"])
    typical = data.get("typical_metadata")
    if typical is not None:
        if not isinstance(typical, dict):
            fail("typical_metadata", "must be an object: modality -> metadata")
        for modality, metadata in typical.items():
            if not isinstance(metadata, dict):
                fail(f"typical_metadata.{modality}", "must be an object")
            try:
                ImageMetadata.from_dict(metadata, where=f"typical_metadata.{modality}")
            except ValueError as error:
                raise ValueError(f"{source}: field {error}") from None
    for key in ("tasks", "task_filter"):
        tasks = data.get(key)
        if tasks is not None and (not isinstance(tasks, list) or not all(
                isinstance(t, str) or (isinstance(t, list) and len(t) == 2 and all(isinstance(v, str) for v in t))
                for t in tasks)):
            fail(key, f"must be a list of 'SOURCE->TARGET' tasks (got {tasks!r})")
    return data


def _text_encoder_config(data: Any, source: str) -> None:
    if not isinstance(data, dict) or data.get("format") != "unisyn_v2.TextEncoderArtifact":
        raise ValueError(f"{source}: not a unisyn_v2.TextEncoderArtifact config")
    if not isinstance(data.get("version"), int) or isinstance(data.get("version"), bool):
        raise ValueError(f"{source}: field version: must be an integer")
    kwargs = data.get("text_encoder_kwargs")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{source}: field text_encoder_kwargs: must be an object")
    for key in ("vocab_size", "context_length", "width", "layers", "heads", "embed_dim"):
        value = kwargs.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
            raise ValueError(f"{source}: field text_encoder_kwargs.{key}: must be an integer in 1-1000000 (got {value!r})")


def _fingerprint(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: must be a JSON object")
    for key, kind in (("dataset_name", str), ("num_cases", int), ("modalities", dict), ("cases", dict)):
        if key in data and not isinstance(data[key], kind):
            raise ValueError(f"{source}: field {key}: must be a {'string' if kind is str else kind.__name__}")


def _finite_numbers(value: Any, source: str, where: str = "") -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{source}: field {where or 'value'}: must be a finite number (got {value!r})")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _finite_numbers(item, source, f"{where}.{key}" if where else str(key))


def validate_model_file(relative: str, path: Path, source: str, trusted_trainers: Collection[str] = ()) -> None:
    """Check one JSON file of a model folder (at ``path``, named ``source`` in errors) against its schema.

    plans.json, dataset.json and the text-encoder tokenizer through their own loaders; trainer.json,
    the artifact config and the fingerprint here; validation summaries must be JSON objects. Other
    files (checkpoints, weights, PNGs, logs) are not JSON and are left to their readers.
    """
    from unisyn_v2.dataset.description import DatasetError, load_dataset_description
    from unisyn_v2.metadata.tokenizer import MetadataTokenizer

    if not relative.endswith(".json"):
        return
    try:
        data = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: invalid JSON ({str(error).rpartition('(')[2].rstrip(')') or error})") from None
    if relative == PLANS_FILE:
        Plans.from_dict(data, source=source)
    elif relative == TRAINER_FILE:
        validate_trainer_info(data, source, trusted_trainers)
        _finite_numbers(data, source)
    elif relative == DATASET_FILE:
        try:
            load_dataset_description(path.parent, read_sidecars=False)
        except DatasetError as error:
            raise ValueError(f"{source}: {error.headline()}") from None
    elif relative == FINGERPRINT_FILE:
        _fingerprint(data, source)
    elif relative.endswith(f"{TEXT_ENCODER_FOLDER}/config.json"):
        _text_encoder_config(data, source)
    elif relative.endswith(f"{TEXT_ENCODER_FOLDER}/tokenizer.json"):
        MetadataTokenizer.from_dict(data, source=source)
    elif not isinstance(data, dict):  # a fold's records (validation summary, split, ...): never read by prediction
        raise ValueError(f"{source}: must be a JSON object")


def build_conditioner(model_folder: Path, trainer_info: dict[str, Any], device: str | torch.device = "cpu") -> Any:
    """The conditioner recorded in trainer.json: TextConditioner (the folder's text_encoder/), OneHotConditioner or None."""
    conditioning = trainer_info.get("conditioning") or {"kind": "none"}
    kind = conditioning.get("kind", "none")
    if kind == "none":
        return None
    if kind == "onehot":
        return OneHotConditioner(conditioning["modalities"], device=device)
    if kind in ("text", "text_physics"):
        folder = confined_path(Path(model_folder), str(conditioning.get("text_encoder", TEXT_ENCODER_FOLDER)))  # stays inside
        tokenizer, encoder = load_text_encoder_artifact(folder, device)
        text = TextConditioner(tokenizer, encoder, normalize=False, device=device)
        return text if kind == "text" else PhysicsTextConditioner(text)  # text_physics: the qMRI head's sequence numbers
    raise ValueError(f"{model_folder}/trainer.json: unknown conditioning kind {kind!r}")


def load_trained_model(model_folder: Path, fold: int | str = 0, checkpoint_name: str = FINAL_CHECKPOINT,
                       device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict[str, Any], Plans]:
    """(network, conditioner, trainer_info, plans) of one fold, network in eval mode on ``device``.

    The network takes and returns volume patches: ``network(x (B, 1, *patch_size), source_text,
    target_text).synthesis`` is (B, 1, *patch_size) (2.5D networks come wrapped in SlicesAsChannels);
    ``conditioner.embed(descriptions)`` gives the text arguments (None for the U-Net baseline).
    """
    model_folder = Path(model_folder)
    trainer_info = read_trainer_info(model_folder)
    layout = ModelLayout(model_folder)
    plans = Plans.load(layout.plans)
    trainer_class = resolve_trainer_class(trainer_info["trainer_class"], f"{layout.trainer_info}: field trainer_class")
    build = getattr(trainer_class, "build_network_from_plans", None)
    if build is None:
        raise ValueError(f"{trainer_info['trainer_class']} has no build_network_from_plans; it is not a synthesis model")
    configuration = trainer_info["configuration"]
    network = build(plans, configuration, trainer_info)
    checkpoint_path = layout.checkpoint(fold, checkpoint_name)
    load_network_weights(network, load_checkpoint(checkpoint_path, map_location="cpu"), checkpoint_path)
    is_slab = trainer_info.get("is_slab", plans.configuration(configuration).is_slab)
    network = volume_network(network, bool(is_slab)).to(device).eval()
    return network, build_conditioner(model_folder, trainer_info, device), trainer_info, plans
