"""Packed trajectory attention equals the padded, densely masked path, for far less work."""

from __future__ import annotations

import pytest
import torch

from trajtok.config import ClipConfig, ModelConfig
from trajtok.models.attention import multi_head_attention
from trajtok.models.info import flop_counter
from trajtok.models.packing import TrajectoryGroups
from trajtok.models.registry import build_model
from trajtok.models.sequence_packing import Packing
from trajtok.models.sizes import TransformerSize
from trajtok.models.trajectory_reader import ForeignTrajectories
from trajtok.models.transformer import Transformer

torch.set_num_threads(1)
PX = 32


def twins(name: str = "trajvit2", **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights, built padded (dense masks) and packed."""
    clip = ClipConfig(frames=4, size=PX)
    torch.manual_seed(0)
    padded = build_model(ModelConfig(name=name, size="tiny", packed=False, **overrides), clip)
    packed = build_model(ModelConfig(name=name, size="tiny", packed=True, **overrides), clip)
    packed.load_state_dict(padded.state_dict())
    return padded, packed


@pytest.mark.parametrize("n", [1, 2, 4])
def test_cross_attention_equals_the_masked_one(n: int) -> None:
    torch.manual_seed(n)
    batch, trajectories, pixels, dim, heads = 2, 5, 40, 16, 2
    queries = torch.randn(batch, trajectories * n, dim)
    keys, values = torch.randn(batch, pixels, dim), torch.randn(batch, pixels, dim)
    owner = torch.randint(0, trajectories - 1, (batch, pixels))  # trajectory 4 owns nothing
    owner[0, :3] = -1  # nor does anyone own these pixels
    slot_owner = torch.arange(trajectories).repeat_interleave(n)
    mask = owner[:, None, :] == slot_owner[None, :, None]
    dense = multi_head_attention(queries, keys, values, heads, mask)
    packed = TrajectoryGroups(owner, n).cross_attention(queries, keys, values, heads)
    owns = mask.any(-1)
    assert torch.allclose(packed[owns], dense[owns], atol=1e-5)
    assert torch.equal(packed[~owns], torch.zeros_like(packed[~owns]))  # empty: zeros, dropped later


@pytest.mark.parametrize("n", [1, 2, 4])
def test_trajvit2_packed_equals_padded_outputs_and_gradients(n: int) -> None:
    padded, packed = twins(tokens_per_trajectory=[n])
    frames = torch.randn(2, 4, 3, PX, PX)
    outputs = []
    for model in (padded, packed):
        torch.manual_seed(1)
        video = model.tokenizer(frames)
        out = model(frames)
        out.video_embedding.square().sum().backward()
        outputs.append(
            (video, out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        )
    (video_a, out_a, grads_a), (video_b, out_b, grads_b) = outputs
    assert torch.equal(video_a.mask, video_b.mask) and video_a.mask.shape == (2, 16 * n)
    assert torch.allclose(video_a.tokens[video_a.mask], video_b.tokens[video_b.mask], atol=1e-5)
    assert torch.allclose(out_a.video_embedding, out_b.video_embedding, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5, rtol=1e-4), name


def test_trajadapter_packed_equals_padded() -> None:
    padded, packed = twins("trajadapter", num_classes=3, adapter_feature_dim=8, adapter_query_dim=6)
    features, grid = torch.randn(2, 4, 5, 5, 8), (4, 5, 5)
    trajectories = ForeignTrajectories.from_ids(torch.randint(0, 7, (2, 100)), torch.randn(2, 8, 6), grid)
    with torch.no_grad():
        assert torch.allclose(
            padded.eval()(features, trajectories).class_logits,
            packed.eval()(features, trajectories).class_logits,
            atol=1e-5,
        )


def test_packed_agrees_under_bf16_autocast() -> None:
    padded, packed = twins()
    frames = torch.randn(2, 4, 3, PX, PX)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = padded.eval().encode_video(frames), packed.eval().encode_video(frames)
    assert torch.allclose(a.float(), b.float(), atol=5e-2)


def test_packed_encoder_does_a_fraction_of_the_attention_work() -> None:
    """The dense path scores every token against every pixel; packed, each pixel meets its own tokens."""
    clip = ClipConfig(frames=4, size=64)
    flops = {}
    for packed in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="trajvit2", size="tiny", packed=packed), clip).eval()
        features, segmentation = model.tokenizer.segmenter.segment(torch.randn(1, 4, 3, 64, 64))
        model.tokenizer.encoder.eval_tokens_per_trajectory = 4
        with torch.no_grad(), flop_counter() as counter:
            model.tokenizer.encoder(features, segmentation)
        flops[packed] = counter.get_total_flops()
    assert flops[True] < 0.5 * flops[False]


def test_packed_transformer_equals_padded_outputs_and_gradients() -> None:
    """Clips of different lengths (one with no valid token but CLS): valid states and every gradient agree,
    and the packed run computes only the valid rows."""
    torch.manual_seed(0)
    size = TransformerSize(width=32, depth=2, heads=4)
    padded, packed = Transformer(size), Transformer(size, packed=True)
    packed.load_state_dict(padded.state_dict())
    tokens = torch.randn(3, 12, 32)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, :12] = True
    mask[1, [1, 4, 5, 9]] = True  # clip 0: every token; clip 1: four; clip 2: CLS alone
    valid = torch.cat([torch.ones(3, 1, dtype=torch.bool), mask], dim=1)
    results = []
    for model in (padded, packed):
        leaf = tokens.clone().requires_grad_()
        with flop_counter() as counter:
            states = model(leaf, mask)
            (states[valid] * torch.linspace(-1, 1, 32)).sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results.append((states, leaf.grad, grads, counter.get_total_flops()))
    (states_a, input_a, grads_a, flops_a), (states_b, input_b, grads_b, flops_b) = results
    assert torch.allclose(states_a[valid], states_b[valid], atol=1e-5)
    assert torch.equal(states_b[~valid], torch.zeros_like(states_b[~valid]))
    assert torch.allclose(input_a, input_b, atol=1e-5)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5, rtol=1e-4), name
    assert flops_b < 0.6 * flops_a  # 18 of 39 rows valid; attention re-pads to the longest clip only


def test_packing_round_trip_and_lengths() -> None:
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    packing = Packing.from_mask(mask)
    assert packing.cu_seqlens.tolist() == [0, 2, 2, 5] and packing.longest == 3
    values = torch.arange(9.0).reshape(3, 3)
    assert packing.pack(values).tolist() == [0.0, 2.0, 6.0, 7.0, 8.0]
    assert torch.equal(packing.unpack(packing.pack(values)), values * mask)
