"""Training-memory estimate of a network, computed on the meta device (no real allocation).

The planner uses it to pick patch and batch sizes from a GPU budget, the way nnU-Net uses
``compute_conv_feature_map_size``, but for any network the factory can build (GFM, cross-attention,
U-Net, text encoders).

With a ``precision`` the activations are the bytes autograd actually saves for backward, found on the
meta device with saved-tensor hooks (equal to the bytes saved by a real CPU step: 13.6, 192.5 and 442.3 MiB
for the cpu 2.5D and 3D GFM and a quarter-width paper GFM, to the byte), at the precision training uses
(fp16 autocast on CUDA, fp32 on CPU), times a peak factor calibrated from a measured CPU step. Without
one, the older count (every innermost module output, once) is kept; it was 0.99-1.93x the saved bytes
depending on the network (1.41x for the cpu preset), which is why the planner no longer uses it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZER_STATES_PER_PARAMETER: dict[str, int] = {"adam": 2, "adamw": 2, "sgd": 1, "none": 0}
PRECISIONS = ("fp32", "fp16", "bf16")
HALF_PRECISIONS = ("fp16", "bf16")
# Modules autocast runs in fp32 whatever the precision (their saved inputs/outputs stay 4 bytes).
FP32_UNDER_AUTOCAST = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Softmax, nn.LogSoftmax)
# Saved bytes of a real bf16-autocast CPU step over the module-level half/fp32 split below: 1.00-1.25
# (the paper GFM's functional prompt arithmetic and residual adds stay fp32): the largest is used.
HALF_PRECISION_SAVED_CORRECTION = 1.25
# Peak memory of a step over the saved activations: the CPU 3D GFM (cpu preset, batch 4, two passes)
# grew its RSS by 978 MiB for 580 MiB saved (1.69; backward's gradient buffers, workspaces, allocator).
# Not yet measured on a GPU (benchmarks/gpu_check.py measures it); the planner keeps its margin too.
ACTIVATION_PEAK_FACTOR = 1.7


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed for one training step (weights, gradients, optimizer state, saved activations)."""

    parameters_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    activations_bytes: int
    total_bytes: int
    precision: str = "fp32"  # the activation precision assumed ("legacy": innermost outputs x dtype_bytes)


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


def count_saved_activation_bytes(network: nn.Module, inputs: Sequence[Optional[torch.Tensor]],
                                 precision: str = "fp32") -> int:
    """Bytes autograd saves for backward in one forward pass, at ``precision`` (run on meta tensors).

    Each saved tensor counts once (by its storage's base tensor); parameters are not activations. At
    fp16/bf16, tensors saved inside modules autocast keeps in fp32 (normalisation, softmax) count 4
    bytes, the rest 2, times :data:`HALF_PRECISION_SAVED_CORRECTION`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    parameters = {id(p) for p in network.parameters()}
    inside_fp32 = [0]
    seen: dict[int, tuple[torch.Tensor, bool]] = {}

    def enter(module: nn.Module, args: Any) -> None:
        inside_fp32[0] += 1

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        inside_fp32[0] -= 1

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) in parameters or not tensor.is_floating_point():
            return tensor
        base = tensor._base if tensor._base is not None else tensor
        seen.setdefault(id(base), (base, inside_fp32[0] > 0))  # the reference keeps id() unique
        return tensor

    handles = []
    for module in network.modules():
        if isinstance(module, FP32_UNDER_AUTOCAST):
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            network(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    if precision == "fp32":
        return sum(base.numel() * 4 for base, _ in seen.values())
    half = sum(base.numel() * (4 if fp32 else 2) for base, fp32 in seen.values())
    return int(half * HALF_PRECISION_SAVED_CORRECTION)


def training_precision(device_type: str) -> str:
    """The activation precision training runs at on a device: fp16 autocast on CUDA (the trainer's), else fp32."""
    return "fp16" if device_type == "cuda" else "fp32"


def estimate_training_memory_bytes(
    network_builder: Callable[[], nn.Module],
    example_inputs_shapes: Sequence[Optional[Sequence[int]]],
    batch_size: int,
    dtype_bytes: int = 4,
    optimizer: str = "adam",
    forward_passes: int = 1,
    param_dtype_bytes: int = 4,
    input_dtypes: Optional[Sequence[Optional[torch.dtype]]] = None,
    precision: Optional[str] = None,
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
        precision: "fp32", "fp16" or "bf16": activations are the saved-for-backward bytes at that
            precision times :data:`ACTIVATION_PEAK_FACTOR` (``dtype_bytes`` is then unused), and half
            precision adds autocast's half copy of the weights. None: the older innermost-output count.

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
    if precision is None:
        activations = count_activation_elements(network, inputs) * dtype_bytes * forward_passes
    else:
        saved = count_saved_activation_bytes(network, inputs, precision)
        weight_copies = 2 * n_params if precision in HALF_PRECISIONS else 0  # autocast's cast weights
        activations = int(saved * forward_passes * ACTIVATION_PEAK_FACTOR) + weight_copies

    parameters = n_params * param_dtype_bytes
    gradients = n_trainable * param_dtype_bytes
    optimizer_state = n_trainable * param_dtype_bytes * OPTIMIZER_STATES_PER_PARAMETER[optimizer]
    estimate = MemoryEstimate(parameters, gradients, optimizer_state, activations,
                              parameters + gradients + optimizer_state + activations, precision or "legacy")
    logger.debug("memory estimate (batch %d, %d passes): %s", batch_size, forward_passes, estimate)
    return estimate
