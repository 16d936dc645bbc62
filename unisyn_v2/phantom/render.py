"""Render a phantom case at any protocol: ground truth for arbitrary acquisition metadata.

A phantom case is fixed by the dataset's :class:`~.generator.PhantomSpec` (seed, grid, modalities,
protocol ranges) and its index: its head, subject and scanner session are rebuilt from the same random
streams the generator used. Rendering takes the case's own protocol of a modality, replaces what the
caller gives, and simulates it from the case's own image stream, so the case's dataset image comes
back bit for bit when nothing is replaced and ``noise=True``, and a protocol sweep keeps the image's
receiver gain (only the contrast changes). ``repetition`` picks the r-th image of an MR modality in a
dataset written with ``protocols_per_modality`` > 1 (its own protocol, stream and gain).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from unisyn_v2.dataset.image_io import Geometry
from unisyn_v2.io_utils import read_json
from unisyn_v2.metadata.fields import ImageMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

from .generator import (
    SPEC_FILE, PhantomAnatomy, PhantomSpec, case_anatomy, case_session, image_stream, render_image,
)
from .protocols import protocol_problems

logger = logging.getLogger(__name__)

_CASE_ID = re.compile(r"^sub-0*(\d+)$")
_MR_TIMING = ("repetition_time", "echo_time", "inversion_time", "flip_angle")


def case_index_of(case: int | str) -> int:
    """0-based case index from an index (int) or a case id such as ``sub-003`` (index 2)."""
    if isinstance(case, (int, np.integer)) and not isinstance(case, bool):
        if case < 0:
            raise ValueError(f"case index must be 0 or more (got {case})")
        return int(case)
    match = _CASE_ID.match(str(case).strip())
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"case must be a 0-based index or a case id like sub-001 (got {case!r})")
    return int(match.group(1)) - 1


def read_phantom_spec(dataset_dir: Path) -> PhantomSpec:
    """The :class:`PhantomSpec` a phantom dataset folder was written with (its ``phantom.json``)."""
    path = Path(dataset_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; only datasets written by unisyn_phantom have it "
                                "(give --seed and the generation options instead)")
    return PhantomSpec.from_dict(read_json(path), where=str(path))


def _as_spec(phantom: PhantomSpec | int) -> PhantomSpec:
    if isinstance(phantom, PhantomSpec):
        return phantom
    if isinstance(phantom, bool) or not isinstance(phantom, (int, np.integer)):
        raise TypeError(f"phantom must be a PhantomSpec or a seed (got {phantom!r})")
    return PhantomSpec(int(phantom))


class PhantomCase:
    """One case of a phantom dataset, rebuilt: anatomy, subject, scanner session and its own protocols.

    Build it once and call :meth:`render` for every protocol of a sweep (the anatomy is the slow part).
    """

    def __init__(self, phantom: PhantomSpec | int, case: int | str):
        self.spec = _as_spec(phantom)
        self.index = case_index_of(case)
        # for messages: the id as given, else the generator's (3 digits below 1000 cases)
        self.case_id = str(case).strip() if isinstance(case, str) else f"sub-{self.index + 1:03d}"
        self.anatomy: PhantomAnatomy = case_anatomy(self.spec, self.index)
        self.modalities, self._session = case_session(self.spec, self.index)

    @property
    def geometry(self) -> Geometry:
        """The case's voxel grid as the image writers take it."""
        g = self.anatomy.geometry
        shape = tuple(int(n) for n in self.anatomy.mask.shape)
        return Geometry(shape, tuple(g.spacing), tuple(g.origin), tuple(g.direction))  # type: ignore[arg-type]

    def protocol(self, modality: str, repetition: int = 1) -> ImageMetadata:
        """The case's own protocol of ``modality`` (drawn even when its dataset has no such image);
        ``repetition`` r: of its r-th image (MR; also beyond the dataset's ``protocols_per_modality``)."""
        return image_stream(self.spec, self.anatomy, self.index, modality, self._session, repetition)[0]

    def metadata_for(self, modality: str, metadata: ImageMetadata | Mapping[str, Any] | None = None,
                     repetition: int = 1) -> ImageMetadata:
        """The full protocol to render: the case's own (of image ``repetition``), with ``metadata`` applied over it.

        A mapping is a JSON merge patch: its fields replace the case's, and a field set to None removes
        it (``{"inversion_time": None, "repetition_time": 20, ...}`` turns an MPRAGE into a spoiled GRE).
        An :class:`ImageMetadata` replaces the fields it sets. The result must be physically consistent
        (:func:`.protocols.protocol_problems`) and on the phantom's grid (voxel_size).
        """
        name = get_modality(modality).name
        own = self.protocol(name, repetition)
        where = f"case {self.case_id}, {name}" + (f" repetition {repetition}" if repetition != 1 else "")
        if metadata is None:
            merged = own
        elif isinstance(metadata, ImageMetadata):
            merged = metadata.merged_with(own)
        elif isinstance(metadata, Mapping):
            patched = own.to_dict()
            for key, value in metadata.items():
                if value is None:
                    patched.pop(key, None)
                else:
                    patched[key] = value
            merged = ImageMetadata.from_dict(patched, where=f"{where} metadata")
        else:
            raise TypeError(f"{where}: metadata must be ImageMetadata, a mapping or None (got {type(metadata).__name__})")
        spacing = self.anatomy.geometry.spacing
        if merged.voxel_size is not None and not np.allclose(merged.voxel_size, spacing, rtol=0.0, atol=1e-3):
            raise ValueError(f"{where}: voxel_size {list(merged.voxel_size)} differs from the phantom grid "
                             f"{list(spacing)} mm; change the grid (voxel_size of the spec), not the metadata")
        problems = merged.problems()
        said = {text.split(" (")[0] for text in problems}  # TE < TR is checked by both, with other number formats
        problems += [text for text in protocol_problems(name, merged) if text.split(" (")[0] not in said]
        if problems:
            raise ValueError(f"{where}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return merged

    def render(self, modality: str, metadata: ImageMetadata | Mapping[str, Any] | None = None, *, noise: bool = False,
               bias: bool | None = None, blur: bool = True, repetition: int = 1) -> np.ndarray:
        """The case's ``modality`` image (float32, (z, y, x)) at the protocol :meth:`metadata_for` gives.

        ``noise`` switches the acquisition's noise on (Rician MR, Gaussian CT, count-dependent PET);
        ``bias`` the MR receive field (default: as ``noise``, so ``noise=True`` reproduces the dataset's
        image and ``noise=False`` is a clean ground truth); ``blur`` the PET scanner PSF. The receiver
        gain is the case's own for this modality whatever the protocol. ``repetition`` r renders from the
        r-th image of the modality (its protocol, noise and gain): with ``noise=True`` and no ``metadata``
        it is the dataset's ``sub-XXX_run-r_<modality>`` image.
        """
        name = get_modality(modality).name
        full = self.metadata_for(name, metadata, repetition)
        _, rng = image_stream(self.spec, self.anatomy, self.index, name, self._session, repetition)
        return render_image(self.spec, self.anatomy, name, full, rng, noise=noise,
                            bias=noise if bias is None else bias, blur=blur)


def prompt_patch(metadata: ImageMetadata, family: ModalityFamily) -> dict[str, Any]:
    """A prompt's metadata as a merge patch: a prompt states a whole MR timing, so its missing entries
    (TI None of a spin echo or a spoiled GRE) remove the case's own rather than keep them."""
    patch = metadata.to_dict()
    if family is ModalityFamily.MRI and any(getattr(metadata, k) is not None for k in _MR_TIMING):
        patch.update({k: None for k in _MR_TIMING if getattr(metadata, k) is None})
    return patch


def render_subject(phantom: PhantomSpec | int, case: int | str, modality: str,
                   metadata: ImageMetadata | Mapping[str, Any] | None = None, *, noise: bool = False,
                   bias: bool | None = None, blur: bool = True, repetition: int = 1) -> np.ndarray:
    """Render case ``case`` of the phantom ``phantom`` as ``modality`` at the given protocol.

    ``phantom`` is the dataset's :class:`PhantomSpec` (:func:`read_phantom_spec` reads it from a dataset
    folder) or a seed with the generator's defaults (64^3 voxels of 3.2 mm, all modalities, clinical
    ranges). ``case`` is a 0-based index or a case id (``sub-003``). ``metadata`` replaces fields of
    the case's own protocol (see :meth:`PhantomCase.metadata_for`); noise and bias are off by default.
    With the dataset's own spec, no ``metadata`` and ``noise=True`` the result equals the dataset's image
    (``repetition`` r: its r-th image of an MR modality, ``protocols_per_modality`` > 1).
    For sweeps, build one :class:`PhantomCase` and call its ``render``.
    """
    return PhantomCase(phantom, case).render(modality, metadata, noise=noise, bias=bias, blur=blur,
                                             repetition=repetition)

