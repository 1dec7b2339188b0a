"""Probing heads on frozen feature maps: linear, attentive, and TrajAdapter, trained on the same budget.

The heads read the same features (B, T, h, w, C) and differ only in how they pool them:
- `linear`: the mean over (T, h, w), batch-normalised without affine parameters, then a linear classifier
  (the usual linear probe);
- `attentive`: every (t, y, x) feature is a token and one learned query attends over all of them;
- `trajadapter`: a trained TrajTok segmenter's trajectories, on the features' grid, each read their own
  features into n tokens and the same kind of query attends over those (`trajtok.models.trajadapter`);
  one head per n in `eval.probe.tokens_per_trajectory`, named `trajadapter_n{n}`.
The attentive probe is TrajAdapter without the grouping (same projection width, pooling and classifier), so
the gap between them is what trajectories add. Every head gets the same initial seed, the same sequence of
mini-batches, steps, learning-rate schedule and weight decay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trajtok.config import ClipConfig, ModelConfig, ProbeConfig, TrainConfig
from trajtok.errors import ConfigError
from trajtok.models.output import ModelOutput
from trajtok.models.registry import build_model
from trajtok.models.sizes import MODEL_SIZES
from trajtok.models.trajadapter import AttentivePool
from trajtok.models.trajectory_reader import ForeignTrajectories
from trajtok.schedule import lr_at

HEADS = ("linear", "attentive", "trajadapter")


class LinearProbe(nn.Module):
    """Mean-pooled features -> batch norm (no affine) -> linear classifier."""

    def __init__(self, feature_dim: int, classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.classifier = nn.Linear(feature_dim, classes)

    def forward(self, features: torch.Tensor, trajectories: ForeignTrajectories | None = None) -> ModelOutput:
        return ModelOutput(class_logits=self.classifier(self.norm(features.detach().mean(dim=(1, 2, 3)))))


class AttentiveProbe(nn.Module):
    """Every feature a token; one learned query pools them; a linear classifier on top."""

    def __init__(self, feature_dim: int, dim: int, heads: int, classes: int):
        super().__init__()
        self.input = nn.Sequential(nn.Linear(feature_dim, dim), nn.LayerNorm(dim))
        self.pool = AttentivePool(dim, heads)
        self.classifier = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, features: torch.Tensor, trajectories: ForeignTrajectories | None = None) -> ModelOutput:
        tokens = self.input(features.detach()).flatten(1, 3)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return ModelOutput(class_logits=self.classifier(self.pool(tokens, mask)))


def build_head(
    name: str,
    feature_dim: int,
    classes: int,
    size: str,
    tokens_per_trajectory: int = 1,
    query_dim: int = 0,
    hard_mask: bool = True,
) -> nn.Module:
    """A fresh probing head; `size` names the model size whose widths the attentive heads take; TrajAdapter
    makes `tokens_per_trajectory` tokens per trajectory from segmenter queries of width `query_dim`, reading
    by ids (`hard_mask`) or by coverage."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"eval.probe.size '{size}': choose one of {', '.join(MODEL_SIZES)}")
    widths = MODEL_SIZES[size]
    if name == "linear":
        return LinearProbe(feature_dim, classes)
    if name == "attentive":
        return AttentiveProbe(feature_dim, widths.feature_dim, widths.perceiver_heads, classes)
    if name == "trajadapter":
        n = tokens_per_trajectory
        cfg = ModelConfig(
            name="trajadapter",
            size=size,
            num_classes=classes,
            adapter_feature_dim=feature_dim,
            adapter_query_dim=query_dim,
            tokens_per_trajectory=[n],
            eval_tokens_per_trajectory=n,
            hard_mask=hard_mask,
        )
        return build_model(cfg, ClipConfig())
    raise ConfigError(f"eval.probe.heads: unknown head '{name}'; choose from {', '.join(HEADS)}")


def head_variants(budget: ProbeConfig) -> list[tuple[str, str, int]]:
    """(result name, head, tokens per trajectory) of every head to train: one TrajAdapter per n."""
    variants = []
    for name in budget.heads:
        if name == "trajadapter":
            variants += [(f"trajadapter_n{n}", name, n) for n in budget.tokens_per_trajectory]
        else:
            variants.append((name, name, 1))
    return variants


@dataclass
class ProbeResult:
    head: str
    top1: float  # percent, on the test features
    top5: float
    parameters: int
    train_seconds: float
    final_loss: float  # mean cross-entropy over the last 10% of steps

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(vars(self))


def train_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    budget: ProbeConfig,
    seed: int,
    trajectories: ForeignTrajectories | None = None,
) -> tuple[float, float]:
    """Train with AdamW on the budget's schedule, mini-batches drawn by `seed`: (final loss, seconds of the
    steps; the optimizer's one-time imports are not counted against the first head)."""
    schedule = TrainConfig(steps=budget.steps, lr=budget.lr, warmup_steps=budget.warmup_steps, min_lr=0.0)
    optimizer = torch.optim.AdamW(head.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    order = torch.Generator().manual_seed(seed)
    batch = min(budget.batch_size, len(features))
    tail = max(budget.steps // 10, 1)
    losses: list[float] = []
    head.train()
    queue = torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    for step in range(budget.steps):
        if len(queue) < batch:  # epochs of shuffled indices, a new order each epoch
            queue = torch.cat([queue, torch.randperm(len(features), generator=order)])
        picked, queue = queue[:batch], queue[batch:]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, schedule)
        picked_trajectories = trajectories.select(picked) if trajectories is not None else None
        loss = F.cross_entropy(head(features[picked], picked_trajectories).class_logits, labels[picked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses[-tail:])), time.perf_counter() - start


@torch.inference_mode()
def accuracy(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    trajectories: ForeignTrajectories | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-k for fewer than 5 classes); ties count against the truth."""
    head.eval()
    parts = []
    for start in range(0, len(features), batch_size):
        batch = slice(start, start + batch_size)
        parts.append(
            head(
                features[batch], trajectories.select(batch) if trajectories is not None else None
            ).class_logits
        )
    logits = torch.cat(parts)
    true = logits.gather(1, labels[:, None])
    rank = (logits >= true).sum(dim=1)
    top = min(5, logits.shape[1])
    return 100.0 * (rank <= 1).double().mean().item(), 100.0 * (rank <= top).double().mean().item()


def compare_heads(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    budget: ProbeConfig,
    seed: int = 0,
    trajectories: tuple[ForeignTrajectories, ForeignTrajectories] | None = None,
) -> list[ProbeResult]:
    """Train every head of `budget` on the train features and score it on the test features; TrajAdapter
    needs the (train, test) `trajectories` of the same clips on the features' grid."""
    if train_features.ndim != 5 or test_features.shape[1:] != train_features.shape[1:]:
        raise ConfigError(
            f"probe features must be (N, T, h, w, C) alike: {train_features.shape}, {test_features.shape}"
        )
    if budget.steps < 1 or budget.batch_size < 1:
        raise ConfigError("eval.probe.steps and eval.probe.batch_size must be >= 1")
    variants = head_variants(budget)
    if trajectories is None and any(head == "trajadapter" for _, head, _ in variants):
        raise ConfigError("eval.probe.segmenter: TrajAdapter needs a trained segmenter's trajectories")
    train_trajectories, test_trajectories = trajectories or (None, None)
    query_dim = train_trajectories.queries.shape[-1] if train_trajectories is not None else 0
    hard_mask = train_trajectories is None or train_trajectories.coverage is None
    x_train, x_test = torch.from_numpy(train_features).float(), torch.from_numpy(test_features).float()
    y_train, y_test = torch.from_numpy(train_labels).long(), torch.from_numpy(test_labels).long()
    results = []
    for result_name, name, n in tqdm(variants, desc="probes", unit="head"):
        torch.manual_seed(seed)
        head = build_head(name, x_train.shape[-1], num_classes, budget.size, n, query_dim, hard_mask)
        final_loss, seconds = train_head(head, x_train, y_train, budget, seed, train_trajectories)
        top1, top5 = accuracy(head, x_test, y_test, budget.batch_size, test_trajectories)
        params = sum(p.numel() for p in head.parameters())
        results.append(ProbeResult(result_name, top1, top5, params, seconds, final_loss))
    return results
