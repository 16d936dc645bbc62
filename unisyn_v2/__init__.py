"""unisyn_v2: self-configuring, metadata-guided cross-modality brain image synthesis (MRI, CT, PET)."""

__version__ = "0.1.0"
