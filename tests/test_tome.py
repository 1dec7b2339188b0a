"""ToMe-merged ViT3D, the token-merging baseline: token counts, output shapes, and what merging preserves."""

from __future__ import annotations

import pytest
import torch

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.models.registry import build_model
from trajtok.models.sizes import TRANSFORMER_SIZES, TransformerSize
from trajtok.models.tome import ToMeTransformer, r_for_budget, tokens_per_block
from trajtok.models.transformer import Transformer

torch.set_num_threads(1)
TINY = TRANSFORMER_SIZES["tiny"]  # width 64, depth 2


def pair(r: int, size: TransformerSize = TINY) -> tuple[Transformer, ToMeTransformer]:
    """A plain transformer and a merging one with the same weights."""
    torch.manual_seed(0)
    plain = Transformer(size).eval()
    merging = ToMeTransformer(size, r).eval()
    merging.load_state_dict(plain.state_dict())
    return plain, merging


def test_no_merging_gives_the_plain_transformer() -> None:
    plain, merging = pair(0)
    tokens = torch.randn(2, 33, 64)
    assert torch.equal(merging(tokens), plain(tokens))


@pytest.mark.parametrize(("tokens", "r"), [(50, 5), (50, 40), (49, 7), (16, 100)])
def test_output_length_follows_the_merge_schedule(tokens: int, r: int) -> None:
    size = TransformerSize(width=32, depth=4, heads=2)
    _, merging = pair(r, size)
    counts = tokens_per_block(tokens, size.depth, r)
    assert counts[0] == tokens and all(a >= b for a, b in zip(counts, counts[1:]))
    last = counts[-1] - min(r, counts[-1] // 2)
    out = merging(torch.randn(3, tokens, 32))
    assert out.shape == (3, 1 + last, 32) and torch.isfinite(out).all()


def test_merge_schedule_by_hand() -> None:
    assert tokens_per_block(1568, 4, 100) == [1568, 1468, 1368, 1268]
    assert tokens_per_block(10, 4, 100) == [10, 5, 3, 2]  # at most half of the tokens merge per block
    assert tokens_per_block(7, 3, 0) == [7, 7, 7]


@pytest.mark.parametrize("budget", [129.0, 300.0, 800.0, 1568.0])
def test_r_for_budget_is_the_smallest_r_within_the_budget(budget: float) -> None:
    r = r_for_budget(1568, 12, budget)

    def mean(r: int) -> float:
        return sum(tokens_per_block(1568, 12, r)) / 12

    if budget < mean(784):  # out of reach: merging half of the tokens in every block is as low as it goes
        assert r == 784
    else:
        assert mean(r) <= budget and (r == 0 or mean(r - 1) > budget)


def test_merging_exact_duplicates_keeps_the_class_token() -> None:
    """Tokens given twice merge into one of size 2; proportional attention then sees the same clip."""
    plain, merging = pair(r=8)
    unique = torch.randn(2, 8, 64)
    doubled = unique.repeat_interleave(2, dim=1)  # positions 1, 2 | 3, 4 ...: each pair spans the two sets
    reference = plain(doubled)[:, 0]
    assert torch.allclose(merging(doubled)[:, 0], reference, atol=1e-5)
    # merged tokens count twice: the clip is not the one with each token once (what dropping the sizes gives)
    assert not torch.allclose(reference, plain(unique)[:, 0], atol=1e-3)


def test_vit3d_with_merging_from_the_registry() -> None:
    clip = ClipConfig(frames=8, size=32)
    torch.manual_seed(0)
    plain = build_model(ModelConfig(name="vit3d", size="tiny"), clip)
    merged = build_model(ModelConfig(name="vit3d", size="tiny", tome_r=4), clip)
    assert isinstance(merged.transformer, ToMeTransformer)
    assert merged.state_dict().keys() == plain.state_dict().keys()  # a trained vit3d runs merged as it is
    merged.load_state_dict(plain.state_dict())
    frames = torch.randn(2, 8, 3, 32, 32)
    out = merged(frames)
    assert out.video_embedding.shape == (2, 32) and out.num_tokens.tolist() == [16, 16]
    assert not torch.allclose(out.video_embedding, plain(frames).video_embedding, atol=1e-4)
    out.video_embedding.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in merged.transformer.parameters() if p.grad is not None)


def test_merging_is_a_vit3d_option() -> None:
    with pytest.raises(ConfigError, match="model.tome_r"):
        build_model(ModelConfig(name="trajvit2", size="tiny", tome_r=4), ClipConfig(frames=8, size=32))
    with pytest.raises(ConfigError, match="model.tome_r"):
        build_model(ModelConfig(name="vit3d", size="tiny", tome_r=-1), ClipConfig(frames=8, size=32))
    _, merging = pair(4)
    with pytest.raises(ValueError, match="padding mask"):
        merging(torch.randn(1, 8, 64), torch.ones(1, 8, dtype=torch.bool))
