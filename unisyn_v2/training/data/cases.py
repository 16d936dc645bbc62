"""The preprocessed cases a trainer reads: properties loaded once, arrays memory-mapped on demand.

Arrays are opened lazily in each process (background loaders open their own memory maps) and only the
pages a patch touches are read. Pickling drops the open arrays, so the collection can be sent to
spawned worker processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unisyn_v2.io_utils import read_json
from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.preprocessing.case_store import load_preprocessed_case

logger = logging.getLogger(__name__)

MAX_FOREGROUND_POINTS = 20000


@dataclass(frozen=True)
class CaseInfo:
    """What the sampler needs of one case: its modalities and the description of every image."""

    case_id: str
    modalities: tuple[str, ...]
    descriptions: tuple[ImageDescription, ...]


def description_from_channel(channel: dict[str, Any], subject: dict[str, Any]) -> ImageDescription:
    """The ImageDescription of one channel of a case's properties."""
    return ImageDescription(channel["modality"], ImageMetadata.from_dict(channel.get("metadata") or {}),
                            SubjectMetadata.from_dict(subject or {}))


class CaseCollection:
    """Cases of one preprocessed data folder (``preprocessed/<Dataset>/<data_identifier>``).

    Args:
        folder: the data folder.
        case_ids: the cases to use (e.g. a fold's training cases).
    """

    def __init__(self, folder: Path, case_ids: Sequence[str]) -> None:
        self.folder = Path(folder)
        if not case_ids:
            raise ValueError(f"no cases given for {self.folder}")
        self.cases: dict[str, CaseInfo] = {}
        #: cases whose lesion mask (dataset.json ``lesion_mask``) has lesion voxels, in the given order
        self.lesion_case_ids: list[str] = []
        for case_id in case_ids:
            path = self.folder / f"{case_id}.json"
            if not path.is_file():
                raise FileNotFoundError(f"preprocessed case {case_id!r} is missing in {self.folder} "
                                        "(run unisyn_plan_and_preprocess for this dataset and configuration)")
            properties = read_json(path)
            channels = properties["channels"]
            self.cases[case_id] = CaseInfo(
                case_id, tuple(c["modality"] for c in channels),
                tuple(description_from_channel(c, properties.get("subject") or {}) for c in channels))
            if int(properties.get("lesion_voxels") or 0) > 0:
                self.lesion_case_ids.append(case_id)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._foreground: dict[str, np.ndarray] = {}
        self._lesions: dict[str, np.ndarray | None] = {}
        self._lesion_points: dict[str, np.ndarray] = {}

    @property
    def case_ids(self) -> list[str]:
        """Case ids in the given order."""
        return list(self.cases)

    def case_modalities(self) -> dict[str, tuple[str, ...]]:
        """case id -> channel modalities (the pair sampler's input)."""
        return {c: info.modalities for c, info in self.cases.items()}

    def case_prompts(self) -> dict[str, tuple[str, ...]]:
        """case id -> prompt of each channel (tells the pair sampler which images of one modality differ)."""
        return {c: tuple(d.prompt() for d in info.descriptions) for c, info in self.cases.items()}

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(data (C, Z, Y, X), brain mask (Z, Y, X), head mask (Z, Y, X)), memory-mapped, cached per process.

        A case preprocessed before head masks existed uses its brain mask as head (the former loss region)."""
        if case_id not in self._arrays:
            case = load_preprocessed_case(self.folder, case_id, mmap=True)
            if case.head is None:
                logger.warning("case %s in %s has no head mask (%s_head.npy): CT is trained in the brain only; "
                               "run unisyn_plan_and_preprocess again to add it", case_id, self.folder, case_id)
            self._arrays[case_id] = (case.data, case.mask, case.mask if case.head is None else case.head)
        return self._arrays[case_id]

    def foreground_points(self, case_id: str) -> np.ndarray:
        """Up to MAX_FOREGROUND_POINTS mask voxels (N, 3), a fixed subsample, cached per process."""
        if case_id not in self._foreground:
            points = np.argwhere(np.asarray(self.arrays(case_id)[1]) > 0)
            if len(points) > MAX_FOREGROUND_POINTS:
                keep = np.random.default_rng(0).choice(len(points), MAX_FOREGROUND_POINTS, replace=False)
                points = points[np.sort(keep)]
            self._foreground[case_id] = points.astype(np.int32)
        return self._foreground[case_id]

    @property
    def has_lesions(self) -> bool:
        """Whether any case has lesion voxels (then batches carry a ``lesion`` patch)."""
        return bool(self.lesion_case_ids)

    def lesion(self, case_id: str) -> np.ndarray | None:
        """The case's lesions (Z, Y, X) as uint8 0/1 (any label > 0), in memory and cached per process (so a patch
        interpolates a binary map, not label values), or None for a case without lesion voxels."""
        if case_id not in self._lesions:
            self._lesions[case_id] = None
            if case_id in self.lesion_case_ids:
                labels = load_preprocessed_case(self.folder, case_id, mmap=True).lesion
                if labels is None:
                    raise FileNotFoundError(f"{self.folder / (case_id + '_lesion.npy')} is missing although {case_id}.json "
                                            "counts lesion voxels; run unisyn_plan_and_preprocess again")
                self._lesions[case_id] = (np.asarray(labels) > 0).astype(np.uint8)
        return self._lesions[case_id]

    def lesion_points(self, case_id: str) -> np.ndarray:
        """Up to MAX_FOREGROUND_POINTS lesion voxels (N, 3), a fixed subsample (empty without lesions), cached."""
        if case_id not in self._lesion_points:
            lesion = self.lesion(case_id)
            points = np.zeros((0, 3), np.int64) if lesion is None else np.argwhere(np.asarray(lesion) > 0)
            if len(points) > MAX_FOREGROUND_POINTS:
                keep = np.random.default_rng(0).choice(len(points), MAX_FOREGROUND_POINTS, replace=False)
                points = points[np.sort(keep)]
            self._lesion_points[case_id] = points.astype(np.int32)
        return self._lesion_points[case_id]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"], state["_foreground"], state["_lesions"], state["_lesion_points"] = {}, {}, {}, {}
        return state
