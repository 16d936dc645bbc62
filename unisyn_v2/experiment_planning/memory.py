"""Training-memory estimate of a network, computed on the meta device (no real allocation).

The planner uses it to pick patch and batch sizes from a GPU budget, the way nnU-Net uses
``compute_conv_feature_map_size``, but for any network the factory can build (GFM, cross-attention,
U-Net, text encoders).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZER_STATES_PER_PARAMETER: dict[str, int] = {"adam": 2, "adamw": 2, "sgd": 1, "none": 0}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed for one training step (weights, gradients, optimizer state, saved activations)."""

    parameters_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    activations_bytes: int
    total_bytes: int


def _numel(output: Any) -> int:
    """Elements of every tensor in a (possibly nested) module output."""
    if isinstance(output, torch.Tensor):
        return output.numel()
    if isinstance(output, dict):
        return sum(_numel(v) for v in output.values())
    if isinstance(output, (tuple, list)):
        return sum(_numel(v) for v in output)
    return 0


def count_activation_elements(network: nn.Module, inputs: Sequence[Optional[torch.Tensor]]) -> int:
    """Sum of output elements of every innermost module call during one forward pass.

    "Innermost" means a module call during which no other module's forward ran (a leaf module, or a
    module like nn.MultiheadAttention that only calls functionals). Functional ops between modules
    (residual adds, the GFM's alpha/beta arithmetic) are not counted; in-place ReLUs are counted as if
    they allocated. Each output is taken to be saved once for backward: an approximation that is
    close for conv/ReLU stacks and slightly high where outputs are overwritten in place.
    """
    child_ran: list[bool] = []
    total = [0]

    def pre_hook(module: nn.Module, args: Any) -> None:
        if child_ran:
            child_ran[-1] = True
        child_ran.append(False)

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        if not child_ran.pop():
            total[0] += _numel(output)

    handles = []
    for module in network.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            network(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def estimate_training_memory_bytes(
    network_builder: Callable[[], nn.Module],
    example_inputs_shapes: Sequence[Optional[Sequence[int]]],
    batch_size: int,
    dtype_bytes: int = 4,
    optimizer: str = "adam",
    forward_passes: int = 1,
    param_dtype_bytes: int = 4,
    input_dtypes: Optional[Sequence[Optional[torch.dtype]]] = None,
) -> MemoryEstimate:
    """Estimate the memory of one training step without allocating anything.

    The network is built inside ``with torch.device('meta')`` and run on meta tensors, so a paper-size
    GFM costs well under a second. Not included: CUDA context, cuDNN workspaces, allocator
    fragmentation and the data batch itself; the planner should keep a margin.

    Args:
        network_builder: zero-argument callable returning the network, e.g.
            ``lambda: build_synthesis_network("gfm", plans_kwargs)``. It is called under the meta device.
        example_inputs_shapes: one entry per positional forward argument, each a shape for batch 1
            (leading dimension 1) or None to pass None. The leading dimension is replaced by
            ``batch_size``. GFM: ``[(1, 8, 64, 64), (1, text_dim), (1, text_dim)]`` for
            (source, source_text, target_text); U-Net: ``[(1, 8, 64, 64)]``.
        batch_size: samples per step; activations scale with it.
        dtype_bytes: bytes per activation element (4 fp32, 2 under mixed precision).
        optimizer: "adam" / "adamw" (2 states per trainable parameter), "sgd" (momentum, 1) or "none".
        forward_passes: forward passes whose activations coexist before backward; 2 for the GFM's cyclic
            training (source -> target and target -> source in one iteration).
        param_dtype_bytes: bytes per parameter, gradient and optimizer-state element (fp32 master weights).
        input_dtypes: dtype per input (default float32; use torch.long for token ids).

    Returns:
        MemoryEstimate; gradients and optimizer state count trainable (requires_grad) parameters only.
    """
    if batch_size < 1 or forward_passes < 1 or dtype_bytes < 1 or param_dtype_bytes < 1:
        raise ValueError(f"batch_size, forward_passes, dtype_bytes, param_dtype_bytes must be >= 1, got "
                         f"{batch_size}, {forward_passes}, {dtype_bytes}, {param_dtype_bytes}")
    if optimizer not in OPTIMIZER_STATES_PER_PARAMETER:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {sorted(OPTIMIZER_STATES_PER_PARAMETER)}")
    dtypes = list(input_dtypes) if input_dtypes is not None else [None] * len(example_inputs_shapes)
    if len(dtypes) != len(example_inputs_shapes):
        raise ValueError(f"input_dtypes has {len(dtypes)} entries for {len(example_inputs_shapes)} inputs")

    inputs: list[Optional[torch.Tensor]] = []
    for shape, dtype in zip(example_inputs_shapes, dtypes):
        if shape is None:
            inputs.append(None)
            continue
        if len(shape) < 1 or shape[0] != 1:
            raise ValueError(f"example input shapes must be for batch 1 (leading dimension 1), got {tuple(shape)}")
        inputs.append(torch.empty((batch_size, *shape[1:]), dtype=dtype or torch.float32, device="meta"))

    with torch.device("meta"):
        network = network_builder()
    network.train()
    n_params = sum(p.numel() for p in network.parameters())
    n_trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    activations = count_activation_elements(network, inputs) * dtype_bytes * forward_passes

    parameters = n_params * param_dtype_bytes
    gradients = n_trainable * param_dtype_bytes
    optimizer_state = n_trainable * param_dtype_bytes * OPTIMIZER_STATES_PER_PARAMETER[optimizer]
    estimate = MemoryEstimate(parameters, gradients, optimizer_state, activations,
                              parameters + gradients + optimizer_state + activations)
    logger.debug("memory estimate (batch %d, %d passes): %s", batch_size, forward_passes, estimate)
    return estimate
