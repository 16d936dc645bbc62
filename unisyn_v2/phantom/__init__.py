"""Physics-based multi-modal brain phantom: procedural anatomy, MR/CT/PET physics, raw dataset writer.

Public API: :func:`generate_phantom_dataset` writes a raw dataset; :func:`simulate_subject` and
:func:`simulate_image` simulate any protocol on one anatomy (ground truth for benchmarks).
"""

from .anatomy import brain_mask, simulate_subject
from .generator import PHANTOM_MODALITIES, choose_modalities, generate_phantom_dataset
from .protocols import draw_protocol, nominal_protocol
from .simulate import simulate_image
from .tissue_maps import VolumeGeometry, load_tissue_maps
from .tissues import TISSUES, PhantomSubject, draw_subject

__all__ = [
    "PHANTOM_MODALITIES", "TISSUES", "PhantomSubject", "VolumeGeometry", "brain_mask", "choose_modalities",
    "draw_protocol", "draw_subject", "generate_phantom_dataset", "load_tissue_maps", "nominal_protocol",
    "simulate_image", "simulate_subject",
]
