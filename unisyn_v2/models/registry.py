"""Trainer lookup: an explicit table of short names and their ``package.module:Class`` paths.

A name read from a file (a model folder's trainer.json, any JSON) resolves only through
:data:`TRAINERS`: a registered short name, the class name of a registered path, or exactly a
registered path (:func:`resolve_trainer_class`). Nothing else is imported, so an untrusted model
folder cannot make unisyn_v2 run its code. A dotted path ``package.module:Class`` is imported only
when it comes from the user's own command line or code, through :func:`resolve_command_line_trainer`
(which also registers it for this process) or :func:`register_trainer`. No module scanning.
"""

from __future__ import annotations

import importlib
from typing import Any

TRAINERS: dict[str, str] = {
    "neuroclip": "unisyn_v2.training.neuroclip_trainer:NeuroCLIPTrainer",
    "gfm": "unisyn_v2.training.gfm_trainer:GFMTrainer",
    "crossattn": "unisyn_v2.training.variants:CrossAttnBaselineTrainer",
    "crossattn_plain": "unisyn_v2.training.variants:CrossAttnPlainTrainer",
    "gfm_block": "unisyn_v2.training.variants:GFMBlockTrainer",
    "onehot": "unisyn_v2.training.variants:OneHotGFMTrainer",
    "gfm_task": "unisyn_v2.training.variants:GFMTaskTrainer",
    "unet": "unisyn_v2.training.variants:UNetBaselineTrainer",
    "gfm_qmri": "unisyn_v2.training.qmri_trainer:QMRITrainer",
}
BUILTIN_TRAINERS: dict[str, str] = dict(TRAINERS)  # what every fresh process (and -npp worker) knows


class UnknownTrainerError(LookupError):
    """A trainer name that is not registered (or, from the command line, not an importable dotted path)."""


def register_trainer(short_name: str, dotted_path: str, overwrite: bool = False) -> None:
    """Add ``short_name -> "package.module:Class"`` to the table (the user's own code: files never call this)."""
    if short_name in TRAINERS and not overwrite and TRAINERS[short_name] != dotted_path:
        raise ValueError(f"trainer {short_name!r} is already registered as {TRAINERS[short_name]}; pass overwrite=True")
    if ":" not in dotted_path:
        raise ValueError(f"dotted path must read 'package.module:Class', got {dotted_path!r}")
    TRAINERS[short_name] = dotted_path


def _registered() -> str:
    return "registered trainers: " + ", ".join(f"{k} ({v.rpartition(':')[2]})" for k, v in TRAINERS.items())


def _known() -> str:
    return f"{_registered()}; or a dotted path 'package.module:Class' on the command line"


def _import(dotted: str, name: str) -> type:
    module_name, _, class_name = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UnknownTrainerError(f"trainer {name!r}: cannot import module {module_name!r} ({error}); {_known()}") from None
    cls: Any = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise UnknownTrainerError(f"trainer {name!r}: module {module_name!r} has no {class_name!r}; {_known()}")
    return cls  # type: ignore[no-any-return]


TRAINER_INTERFACE = ("run", "initialize", "trainer_info", "model_folder_name")


def _check_trainer(cls: Any, name: str) -> type:
    """A class with the trainer interface (checked by its methods: this layer sits below the training package,
    which it resolves by name only, through importlib)."""
    missing = [m for m in TRAINER_INTERFACE if not callable(getattr(cls, m, None))] if isinstance(cls, type) else ["a class"]
    if missing:
        raise UnknownTrainerError(f"trainer {name!r} resolves to {cls!r}, which is not a trainer (lacks {', '.join(missing)}; "
                                  "subclass unisyn_v2.training.trainer_base.TrainerBase)")
    return cls


def _as_dotted(name: str) -> str:
    if ":" in name:
        return name
    module, _, cls = name.rpartition(".")
    return f"{module}:{cls}"


def registered_trainer_path(name: object, source: str = "") -> str:
    """The registered ``package.module:Class`` of a name, without importing anything.

    ``name`` may come from a file: it must be a registered short name, the class name of a registered
    path, or exactly a registered path; anything else (another dotted path, a non-string) is refused
    with an error naming ``source`` (e.g. ``.../trainer.json: trainer_class``).
    """
    where = f"{source}: " if source else ""
    if not isinstance(name, str) or not name.strip():
        raise UnknownTrainerError(f"{where}trainer class must be a non-empty string naming a registered trainer, "
                                  f"got {name!r}; {_registered()}")
    if name in TRAINERS:
        return TRAINERS[name]
    if name in TRAINERS.values():
        return name
    by_class: dict[str, str] = {}
    for path in TRAINERS.values():
        by_class.setdefault(path.rpartition(":")[2], path)  # the first registration of a class name wins
    if name in by_class:
        return by_class[name]
    if ":" in name or "." in name:
        raise UnknownTrainerError(
            f"{where}trainer {name!r} is not a registered trainer, and a dotted path read from a file is never "
            f"imported (it could run any code); {_registered()}. If you wrote and trust this trainer, name it on "
            f"your own command line (unisyn_predict -tr package.module:Class, unisyn_install_model "
            f"--trust_trainer package.module:Class)")
    raise UnknownTrainerError(f"{where}unknown trainer {name!r}; {_known()}")


def trainer_dotted_path(name: str) -> str:
    """The ``package.module:Class`` a name refers to (registered, or a dotted path as typed); imports nothing."""
    try:
        return registered_trainer_path(name)
    except UnknownTrainerError:
        if isinstance(name, str) and ("." in name or ":" in name):
            return _as_dotted(name)
        raise


def resolve_trainer_class(name: object, source: str = "") -> type:
    """The trainer class of a *registered* name: safe for names read from files (see :func:`registered_trainer_path`)."""
    return _check_trainer(_import(registered_trainer_path(name, source), str(name)), str(name))


def is_command_line_dotted_path(name: str) -> bool:
    """True when ``name`` is not registered and reads like ``package.module:Class`` (or ``package.module.Class``)."""
    try:
        registered_trainer_path(name)
        return False
    except UnknownTrainerError:
        return isinstance(name, str) and ("." in name or ":" in name)


def resolve_command_line_trainer(name: str) -> type:
    """The trainer class of a name the user typed (command line or own code, never a file).

    Registered names resolve as in :func:`resolve_trainer_class`; a ``package.module:Class`` is imported
    and registered under its exact class path, so model folders it writes (or that name exactly it)
    load in this process.
    """
    if not is_command_line_dotted_path(name):
        return resolve_trainer_class(name)
    cls = _check_trainer(_import(_as_dotted(name), name), name)
    path = f"{cls.__module__}:{cls.__qualname__}"
    if path not in TRAINERS.values():
        TRAINERS[path] = path
    return cls


def short_name_of(cls: type) -> str | None:
    """The registered short name of a class, if any."""
    dotted = f"{cls.__module__}:{cls.__qualname__}"
    return next((k for k, v in TRAINERS.items() if v == dotted and k != dotted), None)
