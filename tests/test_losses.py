"""Losses: segmentation matching and masking, total loss modes, contrastive loss across 2 real processes."""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trajtok.config import LossConfig
from trajtok.data.label_batch import label_ids, pack_labels
from trajtok.losses import (
    IGNORE,
    contrastive_loss,
    labels_on_grid,
    match_trajectories,
    segmentation_loss,
    total_loss,
)
from trajtok.models.output import ModelOutput

torch.set_num_threads(1)
GRID = (2, 4, 4)
K = 6


def label_map(seed: int = 0) -> torch.Tensor:
    """(1, 2, 4, 4) ids {0, 3, 7, 9}: 0 is unlabeled; ids are arbitrary uint16 values, not channels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.tensor([0, 3, 7, 9])[torch.randint(0, 4, (1, *GRID), generator=generator)]


def logits_for(labels: torch.Tensor, channel_of: dict[int, int], scale: float = 20.0) -> torch.Tensor:
    """Logits that predict channel channel_of[id] at each pixel; unlabeled pixels get noise."""
    flat = labels.flatten(1)
    logits = torch.randn(*flat.shape, K)
    for label_id, channel in channel_of.items():
        logits[flat == label_id] = scale * torch.nn.functional.one_hot(torch.tensor(channel), K).float()
    return logits


def test_loss_is_minimal_and_equal_for_every_permutation_of_ids() -> None:
    torch.manual_seed(0)
    labels = label_map()
    perfect_a = segmentation_loss(logits_for(labels, {3: 0, 7: 1, 9: 2}), labels, GRID)
    perfect_b = segmentation_loss(logits_for(labels, {3: 5, 7: 3, 9: 1}), labels, GRID)
    merged = segmentation_loss(logits_for(labels, {3: 0, 7: 0, 9: 2}), labels, GRID)  # two objects as one
    noise = segmentation_loss(torch.randn(1, 32, K), labels, GRID)
    for a, b in zip(perfect_a, perfect_b):
        assert torch.isclose(a, b, atol=1e-6)
    for part in range(2):  # focal, dice
        assert perfect_a[part] < 0.1 * merged[part] and perfect_a[part] < 0.1 * noise[part]


def test_unlabeled_pixels_do_not_count() -> None:
    torch.manual_seed(0)
    labels = label_map()
    logits = torch.randn(1, 32, K)
    other = logits.clone()
    unlabeled = labels.flatten(1) == 0
    other[unlabeled] = 100 * torch.randn(int(unlabeled.sum()), K)
    # the unlabeled pixels' argmax changes too, so the matching must ignore them as well
    for a, b in zip(segmentation_loss(logits, labels, GRID), segmentation_loss(other, labels, GRID)):
        assert torch.isclose(a, b)
    nothing = torch.zeros_like(labels)
    logits.requires_grad_(True)
    focal, dice = segmentation_loss(logits, nothing, GRID)
    (focal + dice).backward()
    assert focal == 0 and dice == 0 and torch.isfinite(logits.grad).all()


def _one_hot(hard: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(hard, k).float()


def test_hungarian_matching_follows_the_overlap() -> None:
    labels = torch.tensor([[0, 5, 5, 5, 8, 8, 2, 2]])
    hard = torch.tensor([[4, 1, 1, 0, 0, 0, 3, 3]])
    target = match_trajectories(_one_hot(hard, 5), labels, num_trajectories=5)
    assert target.tolist() == [[IGNORE, 1, 1, 1, 0, 0, 3, 3]]


def test_a_query_that_wins_no_pixel_gets_the_label_it_covers_best() -> None:
    # query 0 wins every pixel; query 2 wins none but holds more mass on label 7 than query 1 does
    labels = torch.tensor([[3, 3, 3, 3, 7, 7]])
    probabilities = torch.tensor([[[0.8, 0.1, 0.1]] * 4 + [[0.5, 0.1, 0.4]] * 2])
    target = match_trajectories(probabilities, labels, num_trajectories=3)
    assert target.tolist() == [[0, 0, 0, 0, 2, 2]]  # on hard masks queries 1 and 2 would tie at IoU 0


def test_trajectories_beyond_k_are_dropped_smallest_first() -> None:
    # ids 1..4 with 4, 3, 2 and 2 pixels; K = 2 keeps ids 1 and 2, then drops the tie 3 vs 4 entirely
    labels = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4]])
    target = match_trajectories(torch.full((1, 11, 2), 0.5), labels, num_trajectories=2)
    assert (target[0, :7] != IGNORE).all() and (target[0, 7:] == IGNORE).all()
    labels = torch.tensor([[9, 9, 4, 4]])  # a tie in size: the smaller id is kept
    target = match_trajectories(torch.ones(1, 4, 1), labels, num_trajectories=1)
    assert target.tolist() == [[IGNORE, IGNORE, 0, 0]]


def test_labels_are_resized_to_the_logit_grid_with_nearest() -> None:
    small = label_map().to(torch.int32)
    big = small.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert torch.equal(labels_on_grid(big, GRID), small.flatten(1).long())
    uint16 = torch.full((1, 1, 8, 8), 65535, dtype=torch.uint16)
    assert labels_on_grid(uint16, (1, 2, 2)).tolist() == [[65535] * 4]


def _output(batch: int, with_segmentation: bool = True) -> ModelOutput:
    torch.manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(batch, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(batch, 8), dim=-1)
    seg = torch.randn(batch, 32, K) if with_segmentation else None
    return ModelOutput(video, text, torch.tensor(14.3), seg, GRID if with_segmentation else None)


def test_total_loss_weights_and_modes() -> None:
    labels = label_map().expand(2, -1, -1, -1)
    cfg = LossConfig(contrastive=1.0, focal=0.5, dice=1.0)
    joint = total_loss(_output(2), labels, cfg, "joint")
    expected = joint["contrastive"] + 0.5 * joint["focal"] + 1.0 * joint["dice"]
    assert torch.isclose(joint["loss"], expected)
    pretrain = total_loss(_output(2), labels, cfg, "segmenter")
    assert "contrastive" not in pretrain
    assert torch.isclose(pretrain["loss"], pretrain["focal"] + 2 * pretrain["dice"])
    vit3d = total_loss(_output(2, with_segmentation=False), labels, cfg, "joint")
    assert set(vit3d) == {"contrastive", "loss"}
    with pytest.raises(ValueError, match="segmenter loss needs"):
        total_loss(_output(2, with_segmentation=False), labels, cfg, "segmenter")
    # the paper's no-Dice ablation: train.loss.dice=0 train.loss.pretrain_dice=0 leaves focal alone
    no_dice = LossConfig(dice=0.0, pretrain_dice=0.0)
    joint = total_loss(_output(2), labels, no_dice, "joint")
    assert torch.isclose(joint["loss"], joint["contrastive"] + 0.5 * joint["focal"]) and joint["dice"] > 0
    pretrain = total_loss(_output(2), labels, no_dice, "segmenter")
    assert torch.isclose(pretrain["loss"], pretrain["focal"])


def test_contrastive_loss_prefers_matching_pairs() -> None:
    video = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    matched = contrastive_loss(video, video, torch.tensor(14.3))
    shuffled = contrastive_loss(video, video.roll(1, dims=0), torch.tensor(14.3))
    assert matched < shuffled


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_loss(rank: int, port: int, video: torch.Tensor, text: torch.Tensor, out_dir: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("error", FutureWarning)  # deprecated collectives flood every step's log
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        batch = video.shape[0] // 2
        mine = slice(rank * batch, (rank + 1) * batch)
        local_video = video[mine].clone().requires_grad_(True)
        local_text = text[mine].clone().requires_grad_(True)
        scale = torch.tensor(14.3, requires_grad=True)
        loss = contrastive_loss(local_video, local_text, scale)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "video": local_video.grad, "text": local_text.grad, "scale": scale.grad},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_contrastive_loss_in_two_processes_equals_the_joined_batch(tmp_path) -> None:
    torch.manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    mp.spawn(_rank_loss, args=(_free_port(), video, text, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    joined_video, joined_text = video.clone().requires_grad_(True), text.clone().requires_grad_(True)
    scale = torch.tensor(14.3, requires_grad=True)
    joined = contrastive_loss(joined_video, joined_text, scale)
    joined.backward()

    # ranks' losses averaged = the joined loss; gradients averaged over ranks (as DDP does) = the joined ones
    assert torch.isclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, joined, atol=1e-6)
    world = 2
    assert torch.allclose(torch.cat([r["video"] for r in ranks]) / world, joined_video.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["text"] for r in ranks]) / world, joined_text.grad, atol=1e-6)
    assert torch.isclose((ranks[0]["scale"] + ranks[1]["scale"]) / world, scale.grad, atol=1e-6)


def test_a_batch_carries_uint16_ids_in_int16_and_the_loss_reads_them_back():
    """The loader's int16 transport (a quarter of int64's bytes) loses no id, the largest included."""
    ids = np.array([0, 1, 300, 32767, 32768, 40000, 65535], dtype=np.uint16)
    maps = [np.resize(ids, (2, 4, 4)).astype(np.uint16), np.full((2, 4, 4), 65535, np.uint16)]
    packed = pack_labels(maps)
    assert packed.dtype == torch.int16 and packed.element_size() == 2
    expected = torch.from_numpy(np.stack(maps).astype(np.int64))
    assert torch.equal(label_ids(packed), expected)
    assert torch.equal(labels_on_grid(packed, (2, 4, 4)), expected.flatten(1))
    assert torch.equal(labels_on_grid(packed, (2, 2, 2)), labels_on_grid(expected, (2, 2, 2)))
