"""The model folder's layout: its name and the files it holds, defined once for training, prediction and sharing.

``results/<Dataset>/<Trainer>[_<tasks>]__<plans>__<configuration>/`` holds ``plans.json``, ``dataset.json``,
``dataset_fingerprint.json``, ``trainer.json``, ``text_encoder/`` (text-conditioned models) and one
``fold_<f>/`` per trained fold with its checkpoints, log, progress plot and ``validation/``. Trainers write it
(``unisyn_v2.training``), the predictor and ``unisyn_install_model`` read it (``unisyn_v2.models.folder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PLANS_FILE = "plans.json"
TRAINER_FILE = "trainer.json"
DATASET_FILE = "dataset.json"
FINGERPRINT_FILE = "dataset_fingerprint.json"
TEXT_ENCODER_FOLDER = "text_encoder"
VALIDATION_FOLDER = "validation"
TRAINING_LOG = "training_log.txt"
PROGRESS_PLOT = "progress.png"
FINAL_CHECKPOINT = "checkpoint_final.pth"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
BEST_CHECKPOINT = "checkpoint_best.pth"
#: nnU-Net's resume order for ``--c``: final, else latest, else best.
CHECKPOINT_NAMES = (FINAL_CHECKPOINT, LATEST_CHECKPOINT, BEST_CHECKPOINT)
FOLD_PREFIX = "fold_"
NAME_SEPARATOR = "__"


@dataclass(frozen=True)
class ModelFolderName:
    """``<trainer>__<plans>__<configuration>``; ``trainer`` is the class name, plus ``_<tasks>`` for a task filter."""

    trainer: str
    plans: str
    configuration: str

    def __str__(self) -> str:
        return NAME_SEPARATOR.join((self.trainer, self.plans, self.configuration))

    @classmethod
    def parse(cls, name: str) -> "ModelFolderName":
        """Split a folder name; ValueError when it is not three ``__``-separated parts."""
        parts = str(name).split(NAME_SEPARATOR)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{name!r} is not a model folder name (<Trainer>{NAME_SEPARATOR}<plans>{NAME_SEPARATOR}"
                             "<configuration>)")
        return cls(*parts)

    def belongs_to(self, trainer_class_name: str) -> bool:
        """True for the class's own folder and for its task-filtered folders (``<Class>_<tasks>``)."""
        return self.trainer == trainer_class_name or self.trainer.startswith(trainer_class_name + "_")


@dataclass(frozen=True)
class ModelLayout:
    """Paths inside one model folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> ModelFolderName:
        return ModelFolderName.parse(self.root.name)

    @property
    def plans(self) -> Path:
        return self.root / PLANS_FILE

    @property
    def trainer_info(self) -> Path:
        return self.root / TRAINER_FILE

    @property
    def dataset(self) -> Path:
        return self.root / DATASET_FILE

    @property
    def fingerprint(self) -> Path:
        return self.root / FINGERPRINT_FILE

    @property
    def text_encoder(self) -> Path:
        return self.root / TEXT_ENCODER_FOLDER

    def fold(self, fold: int | str) -> Path:
        return self.root / f"{FOLD_PREFIX}{fold}"

    def checkpoint(self, fold: int | str, name: str = FINAL_CHECKPOINT) -> Path:
        return self.fold(fold) / name

    def validation(self, fold: int | str) -> Path:
        return self.fold(fold) / VALIDATION_FOLDER

    def folds_holding(self, checkpoint: str = FINAL_CHECKPOINT) -> list[str]:
        """The default ensemble: numbered folds holding ``checkpoint`` (in order), else ``all`` when it holds it."""
        folds = [p.parent.name[len(FOLD_PREFIX):] for p in self.root.glob(f"{FOLD_PREFIX}*/{checkpoint}")]
        numbered = sorted((f for f in folds if f.isdigit()), key=int)
        return numbered or [f for f in folds if f == "all"]


def fold_of(top_level_name: str) -> str | None:
    """The fold a model folder's top-level entry belongs to (``fold_3`` -> ``3``), None for the shared files."""
    return top_level_name[len(FOLD_PREFIX):] if top_level_name.startswith(FOLD_PREFIX) else None
