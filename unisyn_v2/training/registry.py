"""Trainer lookup: an explicit table of short names, registered class names, or ``package.module:Class``.

No module scanning: a name resolves through :data:`TRAINERS` (short name -> dotted path), through the
class names of those paths, or is itself a dotted path, imported with importlib (custom trainers
outside the package work that way, or after :func:`register_trainer`).
"""

from __future__ import annotations

import importlib

TRAINERS: dict[str, str] = {
    "neuroclip": "unisyn_v2.training.neuroclip_trainer:NeuroCLIPTrainer",
    "gfm": "unisyn_v2.training.gfm_trainer:GFMTrainer",
    "crossattn": "unisyn_v2.training.variants:CrossAttnBaselineTrainer",
    "onehot": "unisyn_v2.training.variants:OneHotGFMTrainer",
    "gfm_task": "unisyn_v2.training.variants:GFMTaskTrainer",
    "unet": "unisyn_v2.training.variants:UNetBaselineTrainer",
}


class UnknownTrainerError(LookupError):
    """A trainer name that is neither registered nor an importable dotted path."""


def register_trainer(short_name: str, dotted_path: str, overwrite: bool = False) -> None:
    """Add ``short_name -> "package.module:Class"`` to the table."""
    if short_name in TRAINERS and not overwrite and TRAINERS[short_name] != dotted_path:
        raise ValueError(f"trainer {short_name!r} is already registered as {TRAINERS[short_name]}; pass overwrite=True")
    if ":" not in dotted_path:
        raise ValueError(f"dotted path must read 'package.module:Class', got {dotted_path!r}")
    TRAINERS[short_name] = dotted_path


def _known() -> str:
    names = ", ".join(f"{k} ({v.rpartition(':')[2]})" for k, v in TRAINERS.items())
    return f"known trainers: {names}; or a dotted path 'package.module:Class'"


def _import(dotted: str, name: str) -> type:
    module_name, _, class_name = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UnknownTrainerError(f"trainer {name!r}: cannot import module {module_name!r} ({error}); {_known()}") from None
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise UnknownTrainerError(f"trainer {name!r}: module {module_name!r} has no {class_name!r}; {_known()}")
    return cls  # type: ignore[return-value]


def trainer_dotted_path(name: str) -> str:
    """The ``package.module:Class`` a name refers to (short name, registered class name or dotted path)."""
    if name in TRAINERS:
        return TRAINERS[name]
    by_class = {v.rpartition(":")[2]: v for v in TRAINERS.values()}
    if name in by_class:
        return by_class[name]
    if ":" in name:
        return name
    if "." in name:
        module, _, cls = name.rpartition(".")
        return f"{module}:{cls}"
    raise UnknownTrainerError(f"unknown trainer {name!r}; {_known()}")


def resolve_trainer_class(name: str) -> type:
    """The trainer class for a name; it must subclass TrainerBase."""
    from unisyn_v2.training.trainer_base import TrainerBase

    cls = _import(trainer_dotted_path(name), name)
    if not (isinstance(cls, type) and issubclass(cls, TrainerBase)):
        raise UnknownTrainerError(f"trainer {name!r} resolves to {cls!r}, which is not a TrainerBase subclass")
    return cls


def short_name_of(cls: type) -> str | None:
    """The registered short name of a class, if any."""
    dotted = f"{cls.__module__}:{cls.__qualname__}"
    return next((k for k, v in TRAINERS.items() if v == dotted), None)
