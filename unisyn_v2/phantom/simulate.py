"""One entry point that turns tissue maps, a protocol and a subject into an image of any modality."""

from __future__ import annotations

import logging

import numpy as np

from unisyn_v2.metadata.fields import ImageMetadata, SubjectMetadata
from unisyn_v2.metadata.modalities import ModalityFamily, get_modality

from .ct import simulate_ct
from .mri import simulate_mri
from .pet import simulate_pet
from .tissues import PhantomSubject, draw_subject

logger = logging.getLogger(__name__)


def as_phantom_subject(subject: PhantomSubject | SubjectMetadata | None) -> PhantomSubject:
    """A PhantomSubject as given, or the nominal one (mid-range values, amyloid-negative) for demographics."""
    if isinstance(subject, PhantomSubject):
        return subject
    if subject is None:
        return draw_subject(None)
    return draw_subject(None, age=subject.age, sex=subject.sex)


def simulate_image(modality_name: str, tissues: dict[str, np.ndarray], metadata: ImageMetadata,
                   subject: PhantomSubject | SubjectMetadata | None, rng: np.random.Generator, *,
                   noise: bool = True, bias: bool = True, blur: bool = True) -> np.ndarray:
    """Simulate ``modality_name`` (float32, (z, y, x)) with exactly the parameters in ``metadata``.

    Fields missing from ``metadata`` take nominal values (see :func:`.protocols.nominal_protocol`), so a
    benchmark can vary one parameter (an unseen TE or TI) on the same anatomy and subject. ``noise``,
    ``bias`` (MRI receive field) and ``blur`` (PET PSF) switch the degradations off for ground truth.
    The result depends only on the inputs and the state of ``rng``.
    """
    modality = get_modality(modality_name)
    person = as_phantom_subject(subject)
    if modality.family is ModalityFamily.MRI:
        return simulate_mri(modality.name, tissues, metadata, person, rng, noise=noise, bias=bias)
    if modality.family is ModalityFamily.CT:
        return simulate_ct(tissues, metadata, person, rng, noise=noise)
    tracer = metadata.tracer or modality.tracer
    if tracer is None:
        raise ValueError(f"PET modality {modality.name!r} needs a tracer in its metadata")
    if modality.tracer is not None and metadata.tracer is not None and metadata.tracer != modality.tracer:
        raise ValueError(f"metadata tracer {metadata.tracer!r} does not match modality {modality.name!r}")
    voxel_size = metadata.voxel_size
    if voxel_size is None:
        voxel_size = (1.0, 1.0, 1.0)
        if blur:
            logger.warning("%s metadata has no voxel_size; assuming 1 mm voxels for the PSF", modality.name)
    return simulate_pet(tracer, tissues, metadata, person, rng, voxel_size, noise=noise, blur=blur)
