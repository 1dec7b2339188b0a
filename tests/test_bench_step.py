"""The benchmarked training step's early Hungarian matching gives the loss of the plain one."""

from __future__ import annotations

import pytest
import torch

from trajtok.config import ClipConfig, LossConfig, ModelConfig
from trajtok.losses import EarlyMatching, labels_on_grid, match_trajectories, total_loss
from trajtok.models.registry import build_model
from trajtok.models.text import build_tokenizer

torch.set_num_threads(1)


def test_early_matching_gives_the_same_targets_and_loss() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(name="trajvit2", size="tiny", tokens_per_trajectory=[2]), ClipConfig(4, 32)
    )
    matching = EarlyMatching(model.tokenizer.segmenter.head)
    frames = torch.randn(2, 4, 3, 32, 32)
    labels = torch.randint(0, 6, (2, 4, 32, 32))  # full-size maps: resized to the logit grid on the host
    ids, mask = build_tokenizer("bytes").encode_batch(["a dog", "two cars"], 64)
    out = model(frames, ids, mask)
    targets = matching.targets(labels)
    expected = match_trajectories(out.seg_logits.softmax(-1), labels_on_grid(labels, out.seg_grid), 16)
    assert torch.equal(targets, expected) and (targets >= 0).any()
    early = total_loss(out, labels, LossConfig(), seg_targets=targets)
    plain = total_loss(out, labels, LossConfig())
    assert early.keys() == plain.keys() == {"contrastive", "focal", "dice", "loss"}
    for name in plain:
        assert torch.equal(early[name], plain[name]), name
    with pytest.raises(RuntimeError, match="no training forward"):
        matching.targets(labels)  # one forward, one set of targets


def test_early_matching_skips_eval_forwards() -> None:
    model = build_model(ModelConfig(name="trajvit2", size="tiny"), ClipConfig(2, 32)).eval()
    matching = EarlyMatching(model.tokenizer.segmenter.head)
    with torch.no_grad():
        model.encode_video(torch.randn(1, 2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no training forward"):
        matching.targets(torch.zeros(1, 2, 8, 8, dtype=torch.long))
    matching.remove()
    model.train()(torch.randn(1, 2, 3, 32, 32))
    with pytest.raises(RuntimeError):
        matching.targets(torch.zeros(1, 2, 8, 8, dtype=torch.long))  # removed: it no longer listens


def test_channels_last_backbone_gives_the_same_features() -> None:
    clip = ClipConfig(4, 32)
    torch.manual_seed(0)
    plain = build_model(ModelConfig(name="trajvit2", size="tiny"), clip).eval()
    fast = build_model(ModelConfig(name="trajvit2", size="tiny", channels_last=True), clip).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.tokenizer.segmenter.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        features, grid = fast.tokenizer.segmenter.backbone(frames)
        reference, _ = plain.tokenizer.segmenter.backbone(frames)
        assert grid == (4, 8, 8) and torch.allclose(features, reference, atol=1e-5)
        assert torch.allclose(fast.encode_video(frames), plain.encode_video(frames), atol=1e-5)
