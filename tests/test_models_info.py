"""`trajtok model-info` through the real command line: parameters, FLOPs and tokens per clip."""

from __future__ import annotations

import json

import pytest

from launch.cli import main


def info(capsys, *args: str) -> dict:
    assert main(["model-info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_vit3d_uses_ten_times_the_tokens_of_trajvit2_at_16_frames_224px(capsys) -> None:
    traj = info(capsys, "trajvit2", "size=paper", "frames=16", "resolution=224")
    vit = info(capsys, "vit3d", "size=paper", "frames=16", "resolution=224")
    assert vit["tokens_per_clip"] == 8 * 14 * 14
    assert traj["tokens_per_clip"] == 128  # K = 128 trajectories x n = 1 at inference, at most
    assert vit["tokens_per_clip"] >= 10 * traj["tokens_per_clip"]
    # the same transformer and heads; only the tokenizer differs
    for part in ("transformer", "clip_heads", "text_tower"):
        assert traj["parameters"][part] == vit["parameters"][part]
    assert traj["parameters"]["total"] == sum(v for k, v in traj["parameters"].items() if k != "total")
    # paper size is ViT-L over 1,569 tokens: 24 layers x (24 W^2 L + 4 W L^2) FLOPs, about 1.2 TFLOPs
    width, length = 1024, 1569
    expected = 24 * (24 * width**2 * length + 4 * width * length**2) / 1e9
    assert vit["gflops"]["video"] == pytest.approx(expected, rel=0.05)
    assert traj["gflops"]["video"] > 0 and traj["gflops"]["text"] > 0


def test_table_and_overrides(capsys) -> None:
    assert main(["model-info", "segmenter", "num_queries=32", "frames=4"]) == 0
    table = capsys.readouterr().out
    assert "segmenter (size tiny), clip 4x224x224" in table and "32 trajectories" in table
    assert "parameters: backbone" in table and "forward GFLOPs" in table
    adapter = info(capsys, "trajadapter", "num_classes=10", "model.adapter_feature_dim=64")
    assert adapter["input"] == "features 16x14x14x64"
    assert main(["model-info", "vit3d", "colour=red"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_a_convolutions_backward_counts_twice_its_forward_whatever_its_groups(groups: int) -> None:
    """torch's own count ignores groups in backward (16x too much for this depthwise conv)."""
    import torch

    from trajtok.models.info import flop_counter

    conv = torch.nn.Conv2d(16, 16, 7, padding=3, groups=groups)
    frames = torch.randn(2, 16, 12, 12, requires_grad=True)
    with flop_counter() as counter:
        conv(frames)
    forward = counter.get_total_flops()
    with flop_counter() as counter:
        conv(frames).sum().backward()
    assert counter.get_total_flops() == 3 * forward  # forward, input gradient, weight gradient


@pytest.mark.parametrize("size", ["tiny", "small", "base", "paper"])
def test_every_size_builds_on_the_meta_device(capsys, size: str) -> None:
    """model-info builds each size without memory or compute; paper is the paper's tokenizer + ViT-L."""
    traj = info(capsys, "trajvit2", f"size={size}", "frames=8")
    vit = info(capsys, "vit3d", f"size={size}", "frames=8")
    assert traj["parameters"]["transformer"] == vit["parameters"]["transformer"] > 0
    assert traj["gflops"]["video"] > 0 and vit["gflops"]["video"] > 0
    if size == "paper":  # ViT-L: 24 x 12 W^2 weights at W = 1024, about 302M; the tokenizer about 45M
        assert traj["parameters"]["transformer"] == pytest.approx(302e6, rel=0.01)
        tokenizer = sum(traj["parameters"][p] for p in ("backbone", "segmenter", "trajectory_encoder"))
        assert tokenizer == pytest.approx(46e6, rel=0.05)
