"""The peers and the long-clip option of `bench model`: run-length tokenized ViT3D and chunked TrajViT2."""

from __future__ import annotations

import pytest
import torch

from trajtok.config import ClipConfig, LossConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.losses import total_loss
from trajtok.models.registry import build_model
from trajtok.models.rlt import run_lengths, tubelet_changes
from trajtok.models.text import build_tokenizer

torch.set_num_threads(1)
PX = 32


def captions(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return build_tokenizer("bytes").encode_batch([f"clip {i}" for i in range(count)], 16)


def test_run_lengths_by_hand() -> None:
    keep = torch.tensor([True, False, False, True, True, False]).view(1, 6, 1, 1)
    assert run_lengths(keep).view(-1).tolist() == [3, 0, 0, 1, 2, 0]


def test_a_static_clip_keeps_one_token_per_position_and_a_moving_one_keeps_all() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vit3d", rlt_threshold=0.1), ClipConfig(frames=8, size=PX))
    still = torch.randn(1, 1, 3, PX, PX).expand(1, 8, -1, -1, -1)
    moving = torch.randn(1, 8, 3, PX, PX)
    positions, tubelets = 2 * 2, 4 * 2 * 2
    assert int(model.tokenizer(still).mask.sum()) == positions
    assert int(model.tokenizer(moving).mask.sum()) == tubelets
    # a patch that changes by less than the threshold counts as still; by more, as new
    nudged = still.clone()
    nudged[:, 4:, :, :16, :16] += 0.05
    assert int(model.tokenizer(nudged).mask.sum()) == positions
    nudged[:, 4:, :, :16, :16] += 0.5
    assert int(model.tokenizer(nudged).mask.sum()) == positions + 1
    assert tubelet_changes(still)[0, 0].isinf().all()  # the first tubelet is always new
    assert tubelet_changes(still[:, :2]).shape == (1, 1, 2, 2)  # one tubelet in time: just the first


def test_rlt_vit3d_trains_and_its_packed_transformer_equals_the_padded_one() -> None:
    clip = ClipConfig(frames=8, size=PX)
    frames = torch.randn(2, 1, 3, PX, PX).repeat(1, 8, 1, 1, 1)
    frames[0, 4:] += torch.randn(3, PX, PX)  # clip 0 changes half-way, clip 1 stays still
    ids, mask = captions(2)
    outputs = []
    for packed in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="vit3d", rlt_threshold=0.1, packed=packed), clip)
        out = model(frames, ids, mask)
        total_loss(out, None, LossConfig())["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        outputs.append(out)
    assert outputs[0].num_tokens.tolist() == [8, 4]
    assert torch.allclose(outputs[0].video_embedding, outputs[1].video_embedding, atol=1e-5)


def test_chunked_trajvit2_gives_one_token_set_per_chunk_and_trains_on_cut_labels() -> None:
    torch.manual_seed(0)
    clip = ClipConfig(frames=4, size=PX)
    model = build_model(ModelConfig(name="trajvit2", segment_chunk_frames=2, tokens_per_trajectory=[1]), clip)
    frames = torch.randn(2, 4, 3, PX, PX)
    ids, mask = captions(2)
    out = model(frames, ids, mask)
    queries = 16
    assert out.token_mask.shape == (2, 2 * queries)
    assert out.seg_logits.shape == (4, 2 * 8 * 8, queries) and tuple(out.seg_grid) == (2, 8, 8)
    trajectories = out.trajectory_ids(2)
    assert trajectories.shape == (2, 4, 8, 8)
    assert trajectories[:, :2].max() <= queries < trajectories[:, 2:].min()  # chunk 1's ids are its own
    labels = torch.zeros(2, 4, PX, PX, dtype=torch.int64)
    labels[:, :, :16] = 1
    labels[:, :, 16:] = 2
    parts = total_loss(out, labels, LossConfig())
    parts["loss"].backward()
    assert parts["dice"] > 0 and torch.isfinite(parts["loss"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(name="trajvit2", rlt_threshold=0.1), "run-length tokenization is a vit3d option"),
        (dict(name="vit3d", rlt_threshold=0.1, tome_r=4), "not with tome_r"),
        (dict(name="trajvit2", segment_chunk_frames=3), "must divide clip.frames"),
        (dict(name="vit3d", segment_chunk_frames=2), "a trajvit2 option"),
    ],
)
def test_bad_peer_options_are_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(**overrides), ClipConfig(frames=8, size=PX))
