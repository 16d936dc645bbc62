"""Reading a trained model folder back: what the predictor calls.

A model folder ``results/<Dataset>/<Trainer>__<plans>__<configuration>/`` holds ``plans.json``,
``dataset.json``, ``dataset_fingerprint.json``, ``trainer.json``, ``text_encoder/`` (text-conditioned
models) and ``fold_N/checkpoint_*.pth`` (written by ``TrainerBase.write_model_folder`` and the
synthesis trainers). :func:`load_trained_model` rebuilds the network with the trainer class's static
``build_network_from_plans`` (the same function training used) and loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unisyn_v2.experiment_planning.plans import Plans
from unisyn_v2.io_utils import confined_path, read_json
from unisyn_v2.networks.conditioners import OneHotConditioner, TextConditioner
from unisyn_v2.networks.text_artifact import load_text_encoder_artifact
from unisyn_v2.training.checkpointing import load_checkpoint, load_network_weights
from unisyn_v2.training.registry import resolve_trainer_class


def read_trainer_info(model_folder: Path) -> dict[str, Any]:
    """``trainer.json`` of a model folder (FileNotFoundError naming the folder)."""
    path = Path(model_folder) / "trainer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_folder} is not a trained model folder (no trainer.json)")
    return read_json(path)


def build_conditioner(model_folder: Path, trainer_info: dict[str, Any], device: str | torch.device = "cpu") -> Any:
    """The conditioner recorded in trainer.json: TextConditioner (the folder's text_encoder/), OneHotConditioner or None."""
    conditioning = trainer_info.get("conditioning") or {"kind": "none"}
    kind = conditioning.get("kind", "none")
    if kind == "none":
        return None
    if kind == "onehot":
        return OneHotConditioner(conditioning["modalities"], device=device)
    if kind == "text":
        folder = confined_path(Path(model_folder), str(conditioning.get("text_encoder", "text_encoder")))  # stays inside
        tokenizer, encoder = load_text_encoder_artifact(folder, device)
        return TextConditioner(tokenizer, encoder, normalize=False, device=device)
    raise ValueError(f"{model_folder}/trainer.json: unknown conditioning kind {kind!r}")


def load_trained_model(model_folder: Path, fold: int | str = 0, checkpoint_name: str = "checkpoint_final.pth",
                       device: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict[str, Any], Plans]:
    """(network, conditioner, trainer_info, plans) of one fold, network in eval mode on ``device``.

    The network takes and returns volume patches: ``network(x (B, 1, *patch_size), source_text,
    target_text).synthesis`` is (B, 1, *patch_size) (2.5D networks come wrapped in SlicesAsChannels);
    ``conditioner.embed(descriptions)`` gives the text arguments (None for the U-Net baseline).
    """
    from unisyn_v2.training.synthesis_trainer import volume_network

    model_folder = Path(model_folder)
    trainer_info = read_trainer_info(model_folder)
    plans = Plans.load(model_folder / "plans.json")
    trainer_class = resolve_trainer_class(trainer_info["trainer_class"])
    build = getattr(trainer_class, "build_network_from_plans", None)
    if build is None:
        raise ValueError(f"{trainer_info['trainer_class']} has no build_network_from_plans; it is not a synthesis model")
    configuration = trainer_info["configuration"]
    network = build(plans, configuration, trainer_info)
    checkpoint_path = model_folder / f"fold_{fold}" / checkpoint_name
    load_network_weights(network, load_checkpoint(checkpoint_path, map_location="cpu"), checkpoint_path)
    is_slab = trainer_info.get("is_slab", plans.configuration(configuration).is_slab)
    network = volume_network(network, bool(is_slab)).to(device).eval()
    return network, build_conditioner(model_folder, trainer_info, device), trainer_info, plans
