"""Tests for the meta-device training-memory estimate used by the planner."""
from __future__ import annotations


import pytest
import torch

from unisyn_v2.experiment_planning.memory import MemoryEstimate, estimate_training_memory_bytes
from unisyn_v2.networks import build_synthesis_network, build_text_encoder, count_parameters, paper_gfm_kwargs

TINY = {"dims": 2, "in_channels": 8, "out_channels": 8, "encoder_width": 16, "num_blocks": 2,
        "feature_dim": 12, "decoder_hidden": [24, 16, 16], "text_dim": 6}


def _gfm_estimate(batch: int = 2, patch: int = 32, num_blocks: int = 2, passes: int = 1) -> MemoryEstimate:
    kwargs = {**TINY, "num_blocks": num_blocks}
    return estimate_training_memory_bytes(lambda: build_synthesis_network("gfm", kwargs),
                                          [(1, 8, patch, patch), (1, 6), (1, 6)], batch, forward_passes=passes)


def test_estimate_components_are_consistent() -> None:
    est = _gfm_estimate()
    n = count_parameters(build_synthesis_network("gfm", TINY))
    assert est.parameters_bytes == est.gradients_bytes == 4 * n
    assert est.optimizer_state_bytes == 8 * n
    assert est.total_bytes == (est.parameters_bytes + est.gradients_bytes + est.optimizer_state_bytes
                               + est.activations_bytes)
    sgd = estimate_training_memory_bytes(lambda: build_synthesis_network("gfm", TINY),
                                         [(1, 8, 32, 32), (1, 6), (1, 6)], 2, optimizer="sgd")
    assert sgd.optimizer_state_bytes == 4 * n


def test_activations_count_leaf_outputs_exactly_for_a_simple_stack() -> None:
    def builder() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))

    est = estimate_training_memory_bytes(builder, [(1, 1, 8, 8)], batch_size=5, dtype_bytes=2)
    assert est.activations_bytes == 5 * (3 + 3 + 2) * 64 * 2


def test_estimate_grows_with_batch_patch_blocks_and_cyclic_passes() -> None:
    base = _gfm_estimate()
    assert _gfm_estimate(batch=4).activations_bytes == 2 * base.activations_bytes
    # spatial activations scale with the patch area; only the small (B, 2F) prompt outputs do not
    assert 3.99 * base.activations_bytes < _gfm_estimate(patch=64).activations_bytes < 4 * base.activations_bytes
    deeper = _gfm_estimate(num_blocks=4)
    assert deeper.activations_bytes > base.activations_bytes and deeper.parameters_bytes > base.parameters_bytes
    assert _gfm_estimate(passes=2).activations_bytes == 2 * base.activations_bytes
    assert _gfm_estimate(batch=4).total_bytes > base.total_bytes


def test_paper_gfm_estimate_is_fast_and_allocates_nothing() -> None:
    import resource

    kwargs = paper_gfm_kwargs()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    est = estimate_training_memory_bytes(lambda: build_synthesis_network("gfm", kwargs),
                                         [(1, 8, 64, 64), (1, 1536), (1, 1536)], batch_size=8, forward_passes=2)
    # 461 M fp32 weights would be 1.7 GiB: the estimate builds the network on the meta device instead
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib < 2**20
    assert est.parameters_bytes == 4 * 460_987_656
    assert 10 * 2**30 < est.total_bytes < 40 * 2**30  # the paper trained batch 8 on a 40 GB A100


def test_unet_and_text_inputs() -> None:
    unet = {"dims": 3, "in_channels": 1, "out_channels": 1, "n_stages": 3, "features_per_stage": [4, 8, 8]}
    est = estimate_training_memory_bytes(lambda: build_synthesis_network("unet", unet), [(1, 1, 16, 16, 16)], 2)
    assert est.activations_bytes > 0
    text = {"vocab_size": 50, "context_length": 32, "width": 16, "layers": 1, "heads": 2, "eot_token_id": 49}
    est = estimate_training_memory_bytes(lambda: build_text_encoder(text), [(1, 32)], 4, input_dtypes=[torch.long])
    assert est.activations_bytes > 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="batch 1"):
        estimate_training_memory_bytes(lambda: torch.nn.Conv2d(1, 1, 1), [(2, 1, 4, 4)], 2)
    with pytest.raises(ValueError, match="optimizer"):
        estimate_training_memory_bytes(lambda: torch.nn.Conv2d(1, 1, 1), [(1, 1, 4, 4)], 2, optimizer="lion")
    with pytest.raises(ValueError):
        estimate_training_memory_bytes(lambda: torch.nn.Conv2d(1, 1, 1), [(1, 1, 4, 4)], 0)


def _saved_bytes_of_a_real_step(network: torch.nn.Module, inputs: list[torch.Tensor]) -> int:
    parameters = {p.untyped_storage().data_ptr() for p in network.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        network(*inputs)
    return sum(size for pointer, size in storages.items() if pointer not in parameters)


@pytest.mark.parametrize("kind", ["gfm", "crossattn"])
def test_meta_saved_bytes_equal_a_real_cpu_steps(kind: str) -> None:
    from unisyn_v2.experiment_planning.memory import count_saved_activation_bytes

    kwargs = {**TINY, "num_heads": 2}
    torch.manual_seed(0)
    network = build_synthesis_network(kind, kwargs).train()
    real = _saved_bytes_of_a_real_step(network, [torch.randn(3, 8, 24, 24), torch.randn(3, 6), torch.randn(3, 6)])
    with torch.device("meta"):
        meta_network = build_synthesis_network(kind, kwargs).train()
    meta_inputs = [torch.empty(3, 8, 24, 24, device="meta"), torch.empty(3, 6, device="meta"), torch.empty(3, 6, device="meta")]
    assert abs(count_saved_activation_bytes(meta_network, meta_inputs, "fp32") - real) <= 0.01 * real


def test_half_precision_saves_about_half_the_activations_and_the_same_weights() -> None:
    kwargs = paper_gfm_kwargs()
    shapes = [(1, 8, 64, 64), (1, 1536), (1, 1536)]
    fp32, fp16 = (estimate_training_memory_bytes(lambda: build_synthesis_network("gfm", kwargs), shapes, 8,
                                                 forward_passes=2, precision=p) for p in ("fp32", "fp16"))
    assert fp16.precision == "fp16" and fp32.precision == "fp32"
    assert fp16.parameters_bytes == fp32.parameters_bytes and fp16.optimizer_state_bytes == fp32.optimizer_state_bytes
    assert 0.5 * fp32.activations_bytes < fp16.activations_bytes < 0.75 * fp32.activations_bytes
    saved_share = fp32.total_bytes - fp16.total_bytes
    assert 0.25 * fp32.activations_bytes < saved_share < 0.5 * fp32.activations_bytes  # the activations' share only
    with pytest.raises(ValueError, match="precision"):
        estimate_training_memory_bytes(lambda: torch.nn.Conv2d(1, 1, 1), [(1, 1, 4, 4)], 2, precision="fp8")
