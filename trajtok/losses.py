"""Training losses: contrastive video-text (across all ranks) and trajectory segmentation.

`total_loss(output, labels, loss_cfg, mode)` is what the trainer calls; the parts are public for tests and
evaluation.

Contrastive: symmetric InfoNCE where each rank scores its own B videos and texts against the texts and
videos of every rank (gathered with gradient). Memory grows linearly with the world size, and with gradients
averaged over ranks (DDP and DeepSpeed do this) the update equals that of the loss on the joined batch.
Each rank must hold the same batch size.

Segmentation, per sample: the label trajectories (ids > 0 of the label map, resized to the logit grid with
nearest) are matched one-to-one to predicted trajectories by the Hungarian method on the soft Dice between
the predicted probabilities and the labels (as Mask2Former matches); then softmax focal loss (gamma 2) and
softmax Dice on the matched channels. Soft, not hard: a query that wins no pixel still holds probability
mass, so the label it covers best goes to it and it comes back to life; matched on hard-mask IoU, every such
query ties at 0 with every label, takes an arbitrary one each step and stays dead (the demo's segmenter used
4-6 of 16 queries and barely learned that way: docs/training.md). Unlabeled pixels (id 0) count nowhere. If
a sample has more label trajectories than the model has queries (K), the K largest are kept (ties: smaller
id first) and the pixels of the others are ignored like unlabeled ones.

The matching runs on the CPU. `EarlyMatching` takes it off the GPU's critical path: it copies the
segmenter's probabilities to the host as soon as the segmenter has run, so the matching overlaps the rest of
the forward instead of stalling the device at the loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from trajtok.config import LossConfig
from trajtok.data.label_batch import label_ids
from trajtok.models.output import ModelOutput
from trajtok.models.positions import Grid

FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1.0
IGNORE = -1


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of each slice onto its owner.

    torch 2.13 deprecates the `*_tensor` names of these collectives for `*_single`; an older torch (a GPU
    user's own build) has only the former.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        mine = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        reduce_scatter(mine, grad, op=dist.ReduceOp.SUM)
        return mine


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, ...) from every rank in rank order; gradients flow back to each rank's own slice."""
    _, world = _world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of normalised (B, E) embeddings; pair i of this rank is positive, all else not."""
    rank, _ = _world()
    video, text = video.float(), text.float()  # bf16 logits at scale 100 lose the ranking between close pairs
    all_video, all_text = gather_with_grad(video), gather_with_grad(text)
    targets = torch.arange(video.shape[0], device=video.device) + rank * video.shape[0]
    video_to_text = logit_scale * video @ all_text.T
    text_to_video = logit_scale * text @ all_video.T
    return (F.cross_entropy(video_to_text, targets) + F.cross_entropy(text_to_video, targets)) / 2


def labels_per_row(labels: torch.Tensor, rows: int) -> torch.Tensor:
    """Label maps (B, T, H, W) cut into `rows` = B * chunks clips of T / chunks frames, for a model that
    segments in chunks (one segmentation row per chunk, in order); unchanged when rows == B."""
    batch, time = labels.shape[:2]
    if rows == batch:
        return labels
    return labels.reshape(rows, time * batch // rows, *labels.shape[2:])


def labels_on_grid(labels: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Label maps (B, T, H, W) of any integer dtype (int16: a batch's uint16 bits, `label_ids`) -> (B, T*h*w)
    long ids on the logit grid (nearest)."""
    ids = label_ids(labels)
    if tuple(ids.shape[1:]) != tuple(grid):
        # float32 holds every uint16 id exactly; interpolate has no integer kernels
        ids = F.interpolate(ids[:, None].float(), size=tuple(grid), mode="nearest")[:, 0].long()
    return ids.flatten(1)


def _match_one(probabilities: torch.Tensor, labels: torch.Tensor, num_trajectories: int) -> torch.Tensor:
    """Per-pixel target channel (IGNORE where unlabeled or dropped) of one sample: (N, K) float, (N,) ids."""
    target = torch.full(labels.shape, IGNORE, dtype=torch.long)
    labelled = labels > 0
    ids, inverse, counts = torch.unique(labels[labelled], return_inverse=True, return_counts=True)
    if len(ids) == 0:
        return target
    keep = np.lexsort((ids.numpy(), -counts.numpy()))[:num_trajectories]  # largest first, then smaller id
    rank = torch.full((len(ids),), -1, dtype=torch.long)
    rank[torch.from_numpy(keep)] = torch.arange(len(keep))
    row = rank[inverse]  # index of each labelled pixel's trajectory among the kept ones, -1 if dropped
    kept = row >= 0
    pixels, row = labelled.nonzero()[:, 0][kept], row[kept]
    mass = probabilities[pixels]  # (M, K): the loss's Dice also counts labelled pixels only
    intersection = torch.zeros(len(keep), mass.shape[1], dtype=mass.dtype).index_add_(0, row, mass)
    size = torch.bincount(row, minlength=len(keep)).to(mass.dtype)
    dice = 2 * intersection / (size[:, None] + mass.sum(0)[None, :]).clamp_min(1e-6)
    rows, cols = linear_sum_assignment(-dice.numpy())
    channel = torch.empty(len(keep), dtype=torch.long)
    channel[torch.from_numpy(rows)] = torch.from_numpy(cols)
    target[pixels] = channel[row]
    return target


def match_trajectories(
    probabilities: torch.Tensor, labels: torch.Tensor, num_trajectories: int
) -> torch.Tensor:
    """Hungarian matching on soft Dice: (B, N, K) probabilities and (B, N) label ids -> (B, N) target channel
    or IGNORE, on the device of `probabilities`. Runs on the CPU with scipy, one assignment per sample."""
    host = probabilities.detach().float().cpu()
    label_host = labels.detach().cpu()
    targets = torch.stack([_match_one(p, lab, num_trajectories) for p, lab in zip(host, label_host)])
    return targets.to(probabilities.device)


class EarlyMatching:
    """Hungarian matching whose device-to-host copy is queued right after the segmenter, not at the loss.

    A forward hook on the segmenter (the `Segmenter` head, in training mode) queues a non-blocking copy of
    its probabilities (B, T*h*w, K) into pinned memory. The loss then waits only for that copy, which the
    GPU did before the trajectory encoder, the transformer and the text tower still in its queue: the
    matching on the CPU overlaps them and nothing waits for the whole forward. Labels stay on the host. Use:
    `matching = EarlyMatching(model.tokenizer.segmenter.head)`, then per step after the forward
    `total_loss(..., seg_targets=matching.targets(labels))`.
    """

    def __init__(self, segmenter: nn.Module):
        self._pending: tuple | None = None
        self._hook = segmenter.register_forward_hook(self._queue_copy)

    def _queue_copy(self, module: nn.Module, args: tuple, segmentation) -> None:
        if not module.training:
            return
        soft = segmentation.soft.detach().float()
        done = None
        if soft.is_cuda:
            host = torch.empty(soft.shape, dtype=soft.dtype, pin_memory=True).copy_(soft, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host = soft.clone()
        self._pending = (host, done, segmentation.grid, soft.shape[-1], soft.device)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Target channels (B, T*h*w) of the last training forward, on its device (`match_trajectories`)."""
        if self._pending is None:
            raise RuntimeError(
                "EarlyMatching.targets: no training forward of the segmenter since the last call"
            )
        host, done, grid, num_trajectories, device = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()
        flat_labels = labels_on_grid(labels_per_row(labels.cpu(), host.shape[0]), grid)
        targets = match_trajectories(host, flat_labels, num_trajectories)
        if device.type == "cuda":
            targets = targets.pin_memory()
        return targets.to(device, non_blocking=True)

    def remove(self) -> None:
        self._hook.remove()


def _mean_over_samples(per_sample: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    return (per_sample * counted).sum() / counted.sum().clamp_min(1)


def segmentation_loss(
    seg_logits: torch.Tensor,
    labels: torch.Tensor,
    grid: Grid,
    gamma: float = FOCAL_GAMMA,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(focal, dice) of logits (B, T*h*w, K) against label maps (B, T, H, W); means over labelled samples.

    Logits of a model that segments in chunks have B * chunks rows (`labels_per_row`).

    `targets`: the matching already done (`EarlyMatching`); the labels are then not read again.
    """
    logits = seg_logits.float()
    target = targets
    if target is None:
        flat_labels = labels_on_grid(labels_per_row(labels.to(logits.device), logits.shape[0]), grid)
        target = match_trajectories(logits.softmax(dim=-1), flat_labels, logits.shape[-1])
    valid = target != IGNORE  # (B, N)
    has_labels = valid.any(dim=1)

    channel = target.clamp_min(0)
    log_probs = logits.log_softmax(dim=-1)
    log_pt = log_probs.gather(-1, channel[..., None])[..., 0]
    pt = log_pt.exp()
    focal_pixels = -((1 - pt) ** gamma) * log_pt
    focal = (focal_pixels * valid).sum(1) / valid.sum(1).clamp_min(1)

    # per-channel Dice sums (B, K) without a (B, N, K) one-hot: only the target channel meets the target
    weight = valid.to(logits.dtype)
    prob_sum = (weight[:, None, :] @ log_probs.exp())[:, 0]
    intersection = torch.zeros_like(prob_sum).scatter_add(1, channel, pt * weight)
    target_sum = torch.zeros_like(prob_sum).scatter_add(1, channel, weight)
    matched = target_sum > 0
    dice_channels = 1 - (2 * intersection + DICE_SMOOTH) / (prob_sum + target_sum + DICE_SMOOTH)
    dice = (dice_channels * matched).sum(1) / matched.sum(1).clamp_min(1)
    return _mean_over_samples(focal, has_labels), _mean_over_samples(dice, has_labels)


def total_loss(
    output: ModelOutput,
    labels: torch.Tensor | None,
    loss_cfg: LossConfig,
    mode: str = "joint",
    seg_targets: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted sum under "loss" and each unweighted part by name ("contrastive", "focal", "dice").

    mode "joint": contrastive + focal * w_focal + dice * w_dice (segmentation only where the model segments
    and labels are given); "segmenter": pretrain_focal * focal + pretrain_dice * dice, no contrastive.
    """
    if mode not in ("joint", "segmenter"):
        raise ValueError(f"loss mode must be 'joint' or 'segmenter', got {mode!r}")
    parts: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    if mode == "joint":
        if output.video_embedding is None or output.text_embedding is None:
            raise ValueError("joint loss needs video and text embeddings (call the model with text)")
        parts["contrastive"] = contrastive_loss(
            output.video_embedding, output.text_embedding, output.logit_scale
        )
        weights = {"contrastive": loss_cfg.contrastive, "focal": loss_cfg.focal, "dice": loss_cfg.dice}
    else:
        if output.seg_logits is None or labels is None:
            raise ValueError("segmenter loss needs a model that segments and label maps")
        weights = {"focal": loss_cfg.pretrain_focal, "dice": loss_cfg.pretrain_dice}
    if output.seg_logits is not None and labels is not None:
        parts["focal"], parts["dice"] = segmentation_loss(
            output.seg_logits, labels, output.seg_grid, targets=seg_targets
        )
    parts["loss"] = sum(weights[name] * value for name, value in parts.items())
    return parts
