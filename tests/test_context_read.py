"""The cost switches of the Perceivers' reads: pooled 2x2 keys/values and one projection shared by both."""

from __future__ import annotations

import pytest
import torch

from trajtok.config import ClipConfig, ModelConfig
from trajtok.models.context import ContextReader, pooled_index
from trajtok.models.info import flop_counter
from trajtok.models.registry import build_model
from trajtok.models.segmenter import Segmenter

torch.set_num_threads(1)
GRID = (2, 6, 4)


def blocky(batch: int = 1, dim: int = 32) -> torch.Tensor:
    """Features constant on every 2x2 cell: pooling them loses nothing."""
    cells = torch.randn(batch, GRID[0] * 3 * 2, dim)
    return cells[:, pooled_index(GRID)]


def test_pooled_index_matches_average_pooling() -> None:
    features = blocky()
    reader = ContextReader(32, heads=2, pooled=True)
    pooled = reader._pool(features, GRID)[0]
    assert torch.allclose(pooled[:, pooled_index(GRID)], features)
    assert reader._pool(torch.randn(1, 2 * 5 * 3, 32), (2, 5, 3))[1] == (2, 3, 2)  # odd sides round up


def test_pooled_segmenter_equals_the_full_read_where_cells_are_uniform() -> None:
    """Softmax over each cell's key once equals it over its four equal copies, up to the keys' rotary
    phases (a cell's pixels sit at four positions): with the rotation off both reads give the same logits."""
    torch.manual_seed(0)
    full, pooled = (Segmenter(32, 6, depth=2, heads=2, pooled=p) for p in (False, True))
    pooled.load_state_dict(full.state_dict())
    for head in (full, pooled):
        head.perceiver.reader.rotary.forward = lambda grid, device=None: (
            torch.ones(grid[0] * grid[1] * grid[2], 16),
            torch.zeros(grid[0] * grid[1] * grid[2], 16),
        )
    features = blocky()
    assert torch.allclose(full(features, GRID).logits, pooled(features, GRID).logits, atol=1e-5)


def test_pooled_read_cuts_the_projection_and_the_query_reads_by_four() -> None:
    clip = ClipConfig(frames=4, size=64)
    flops = {}
    for pooled in (False, True):
        with torch.device("meta"):
            model = build_model(ModelConfig(name="segmenter", pooled_read=pooled), clip)
            features = torch.zeros(1, 4 * 16 * 16, 32)
            with flop_counter() as counter:
                model.head.perceiver.reader(features, (4, 16, 16))
        flops[pooled] = counter.get_total_flops()
    assert flops[True] == pytest.approx(flops[False] / 4, rel=0.01)


def test_shared_read_equals_two_reads_with_the_second_detached() -> None:
    """Values and every gradient (features, norm, projection) of one shared projection equal those of two
    separate reads of the same weights, the second from detached features: the custom backward is right."""
    torch.manual_seed(0)
    reader = ContextReader(32, heads=2)
    with torch.no_grad():
        reader.norm.weight.uniform_(0.5, 1.5)
        reader.norm.bias.normal_()
    features = torch.randn(2, 48, 32)
    weights = [torch.randn(2, 48, 32) for _ in range(4)]

    def loss(first, second) -> torch.Tensor:
        parts = (first.key_states, first.value_states, second.key_states, second.value_states)
        return sum((p * w).sum() for p, w in zip(parts, weights, strict=True))

    results = []
    for shared in (False, True):
        leaf = features.clone().requires_grad_()
        reader.zero_grad()
        if shared:
            first, second = reader(leaf, GRID, shared=True)
        else:
            first, second = reader(leaf, GRID), reader(leaf.detach(), GRID)
        loss(first, second).backward()
        results.append((first, leaf.grad, {n: p.grad.clone() for n, p in reader.named_parameters()}))
    (ref, ref_input, ref_grads), (got, got_input, got_grads) = results
    assert torch.allclose(ref.key_states, got.key_states, atol=1e-5)
    assert torch.allclose(ref_input, got_input, atol=1e-4)
    for name, grad in ref_grads.items():
        assert torch.allclose(grad, got_grads[name], atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("detach", [True, False])
def test_shared_kv_keeps_the_detach_of_the_segmenters_queries(detach: bool) -> None:
    """With shared K/V the query Perceiver still sends no gradient into the backbone's features (unless the
    no-detach ablation asks for it), while its gradient does reach the shared projection."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name="trajvit2", shared_kv=True, detach_features=detach), ClipConfig(frames=2, size=32)
    )
    assert model.tokenizer.segmenter.head.perceiver.reader is None
    captured = {}
    model.tokenizer.segmenter.backbone.register_forward_hook(
        lambda module, args, out: captured.update(features=out[0])
    )
    model.tokenizer.segmenter.head.perceiver.register_forward_hook(
        lambda module, args, out: captured.update(queries=out)
    )
    model.tokenizer(torch.randn(1, 2, 3, 32, 32))
    readout = (captured["queries"] * torch.randn_like(captured["queries"])).sum()
    projection = model.tokenizer.encoder.perceiver.reader.to_kv.weight
    into_features, into_projection = torch.autograd.grad(
        readout, [captured["features"], projection], allow_unused=True
    )
    assert into_projection.abs().sum() > 0
    if detach:
        assert into_features is None or not into_features.any()
    else:
        assert into_features.abs().sum() > 0


def test_shared_kv_and_pooled_read_train_a_trajvit2() -> None:
    """Both switches together: a forward and backward with finite gradients everywhere, fewer FLOPs."""
    clip = ClipConfig(frames=2, size=32)
    flops = {}
    for cheap in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="trajvit2", shared_kv=cheap, pooled_read=cheap), clip)
        with flop_counter() as counter:
            model.encode_video(torch.randn(2, 2, 3, 32, 32)).square().sum().backward()
        flops[cheap] = counter.get_total_flops()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert flops[True] < flops[False]
