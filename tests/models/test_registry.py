"""Trainer registry: short names, class names, dotted paths of custom trainers (command line only), clear errors."""
from __future__ import annotations

import pytest

from unisyn_v2.training.gfm_trainer import GFMTrainer
from unisyn_v2.models.registry import (
    TRAINERS, UnknownTrainerError, register_trainer, resolve_command_line_trainer, resolve_trainer_class, short_name_of,
    trainer_dotted_path,
)
from unisyn_v2.training.trainer_base import TrainerBase
from unisyn_v2.training.variants import (
    CrossAttnBaselineTrainer, GFMTaskTrainer, OneHotGFMTrainer, UNetBaselineTrainer,
)


class MyCustomTrainer(GFMTrainer):
    """A user's trainer outside the package (only importable by its dotted path)."""


class NotATrainer:
    pass


def test_short_names_and_class_names() -> None:
    expected = {"gfm": GFMTrainer, "crossattn": CrossAttnBaselineTrainer, "onehot": OneHotGFMTrainer,
                "gfm_task": GFMTaskTrainer, "unet": UNetBaselineTrainer}
    for short, cls in expected.items():
        assert resolve_trainer_class(short) is cls
        assert resolve_trainer_class(cls.__name__) is cls
        assert short_name_of(cls) == short
        assert not hasattr(cls, "short_name")  # the registry is the one place a trainer's name is defined
    assert set(expected) | {"neuroclip"} <= set(TRAINERS)
    assert trainer_dotted_path("neuroclip") == "unisyn_v2.training.neuroclip_trainer:NeuroCLIPTrainer"


def test_dotted_paths_of_custom_trainers() -> None:
    dotted = f"{__name__}:MyCustomTrainer"
    try:
        with pytest.raises(UnknownTrainerError, match="never imported"):
            resolve_trainer_class(dotted)  # what a name read from a file gets
        assert resolve_command_line_trainer(f"{__name__}.MyCustomTrainer") is MyCustomTrainer
        assert resolve_trainer_class(dotted) is MyCustomTrainer  # now registered, by its exact path
        assert resolve_trainer_class("unisyn_v2.training.gfm_trainer:GFMTrainer") is GFMTrainer
        register_trainer("mine", dotted)
        assert resolve_trainer_class("mine") is MyCustomTrainer
    finally:
        TRAINERS.pop("mine", None)
        TRAINERS.pop(dotted, None)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownTrainerError) as error:
        resolve_trainer_class("gfmm")
    assert "gfm" in str(error.value) and "crossattn" in str(error.value) and "package.module:Class" in str(error.value)
    with pytest.raises(UnknownTrainerError, match="cannot import module"):
        resolve_command_line_trainer("no_such_package.module:Trainer")
    with pytest.raises(UnknownTrainerError, match="has no"):
        resolve_command_line_trainer(f"{__name__}:Missing")
    with pytest.raises(UnknownTrainerError, match="which is not a trainer"):
        resolve_command_line_trainer(f"{__name__}:NotATrainer")
    assert f"{__name__}:NotATrainer" not in TRAINERS.values()
    for not_a_name in (None, 5, ["gfm"], {"gfm": 1}, ""):
        with pytest.raises(UnknownTrainerError, match="must be a non-empty string"):
            resolve_trainer_class(not_a_name)
    with pytest.raises(ValueError, match="already registered"):
        register_trainer("gfm", f"{__name__}:MyCustomTrainer")
    assert issubclass(MyCustomTrainer, TrainerBase)
