"""Physics-based multi-modal brain phantom: procedural anatomy, MR/CT/PET physics, raw dataset writer.

Public API: :func:`generate_phantom_dataset` writes a raw dataset; :func:`render_subject` (and
:class:`PhantomCase` for sweeps) renders any case of it at any protocol, noise-free by default (ground
truth for arbitrary metadata); :func:`simulate_subject` and :func:`simulate_image` simulate any protocol
on one anatomy. MR protocols are drawn from named range sets (:data:`PROTOCOL_RANGES`: clinical, wide).
"""

from .anatomy import brain_mask, simulate_subject
from .generator import (
    PHANTOM_MODALITIES, PhantomAnatomy, PhantomSpec, case_anatomy, choose_modalities, generate_phantom_dataset,
)
from .protocols import (
    PROTOCOL_RANGES, ProtocolRangeSet, SequenceRanges, draw_protocol, get_protocol_ranges, nominal_protocol,
    protocol_problems, typical_protocol,
)
from .render import PhantomCase, read_phantom_spec, render_subject
from .simulate import simulate_image
from .tissue_maps import VolumeGeometry, load_tissue_maps
from .tissues import TISSUES, PhantomSubject, draw_subject

__all__ = [
    "PHANTOM_MODALITIES", "PROTOCOL_RANGES", "TISSUES", "PhantomAnatomy", "PhantomCase", "PhantomSpec", "PhantomSubject",
    "ProtocolRangeSet", "SequenceRanges", "VolumeGeometry", "brain_mask", "case_anatomy", "choose_modalities",
    "draw_protocol", "draw_subject", "generate_phantom_dataset", "get_protocol_ranges", "load_tissue_maps",
    "nominal_protocol", "protocol_problems", "read_phantom_spec", "render_subject", "simulate_image",
    "simulate_subject", "typical_protocol",
]
