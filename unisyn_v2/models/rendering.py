"""The qMRI head's rendered MR volumes on the MRI contract's scale, for the trainers' validation and the predictor.

A :class:`~unisyn_v2.networks.qmri_head.QMRINetwork` renders an MR target as a physical signal (PD units);
:func:`finish_rendered_volume` maps the whole rendered volume onto the plans' MRI normalisation (fitted in the
brain mask: p0.5 -> 0, p99.5 -> 1), as the source images were normalised.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from unisyn_v2.contracts.plans import Plans
from unisyn_v2.metadata.prompts import ImageDescription
from unisyn_v2.networks.qmri_head import QMRINetwork, has_signal_model
from unisyn_v2.preprocessing.case_preprocessor import normalizer_for


def rendering_network(network: nn.Module) -> QMRINetwork | None:
    """The qMRI network inside ``network`` (a SlicesAsChannels wrapper or the network itself), else None."""
    inner = getattr(network, "network", network)
    return inner if getattr(inner, "renders_mri_signal", False) else None


def finish_rendered_volume(network: nn.Module, volume: np.ndarray, mask: np.ndarray | None, target: ImageDescription,
                           plans: Plans) -> np.ndarray:
    """``volume`` in the MRI contract's scale when ``network`` rendered it (an MR target), else unchanged."""
    if rendering_network(network) is None or not has_signal_model(target):
        return volume
    normalizer = normalizer_for(plans, target.modality)
    region = mask if mask is not None and np.any(mask) else None
    return normalizer.forward(volume, normalizer.fit(volume, region)).astype(np.float32)
