"""What the training loop reports every `train.log_every` steps, summed over the interval and the ranks.

Loss parts and token counts stay on the device as tensors between log steps (no host sync per step);
at a log step one all-reduce per kind (sum, min, max) brings every rank's numbers together.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist

from trajtok.models.output import ModelOutput

# batch["loader_s"]: seconds a worker spent, by part, and the trainer's on frames left for the device
LOADER_PARTS = ("decode", "augment", "worker", "device_decode")


class TrainMeter:
    """Accumulates micro-batches between two log steps; `flush` turns them into one metrics dict."""

    def __init__(self, world_size: int, device: torch.device):
        self.world_size = world_size
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.started = time.perf_counter()
        self.data_wait = 0.0
        self.samples = 0
        self.micro_batches = 0
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.token_sum = torch.zeros((), device=self.device)
        self.token_min = torch.full((), float("inf"), device=self.device)
        self.token_max = torch.zeros((), device=self.device)
        self.skipped: Counter[str] = Counter()
        self.loader_s: Counter[str] = Counter()  # worker seconds: decoding, augmenting, the whole batch

    @contextmanager
    def waiting_for_data(self):
        """Time spent blocked on the loader: the data-wait part of the step."""
        start = time.perf_counter()
        yield
        self.data_wait += time.perf_counter() - start

    def add(self, parts: dict[str, torch.Tensor], output: ModelOutput, batch: dict) -> None:
        """One micro-batch's loss parts, token counts and skipped samples."""
        for name, value in parts.items():
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + value.detach().float()
        tokens = _tokens_per_clip(output)
        if tokens is not None:
            tokens = tokens.detach().float()
            self.token_sum += tokens.sum()
            self.token_min = torch.minimum(self.token_min, tokens.min())
            self.token_max = torch.maximum(self.token_max, tokens.max())
        self.samples += len(batch["keys"])
        self.micro_batches += 1
        self.skipped.update(batch.get("skipped", {}))
        self.loader_s.update(batch.get("loader_s", {}))

    def flush(self) -> dict[str, float]:
        """Metrics of the interval since the last flush, the same on every rank (all ranks must call)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        names = sorted(self.loss_sums)
        sums = torch.stack(
            [self.loss_sums[n] for n in names]
            + [
                self.token_sum,
                torch.tensor(float(self.samples), device=self.device),
                torch.tensor(self.data_wait, device=self.device),
                torch.tensor(float(sum(self.skipped.values())), device=self.device),
                *(torch.tensor(self.loader_s[part], device=self.device) for part in LOADER_PARTS),
            ]
        )
        skipped = _summed_over_ranks(self.skipped, self.world_size)
        low, high = self.token_min.clone(), self.token_max.clone()
        if self.world_size > 1:
            dist.all_reduce(sums)
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
        values = sums.tolist()
        steps = self.micro_batches * self.world_size
        metrics = {n if n == "loss" else f"loss/{n}": values[i] / steps for i, n in enumerate(names)}
        token_sum, samples, data_wait, skipped_total, *loader_s = values[len(names) :]
        decode_s, augment_s, worker_s, device_s = loader_s  # LOADER_PARTS
        metrics.update(
            {
                "samples_per_s": samples / elapsed,
                "samples_per_s_per_gpu": samples / elapsed / self.world_size,
                "data_wait_frac": data_wait / self.world_size / elapsed,
                "data/skipped": skipped_total,
                **{f"data/skipped/{reason}": count for reason, count in sorted(skipped.items())},
                "memory_gib": peak_memory_gib(self.device),
            }
        )
        if worker_s > 0:  # the loader's health: what one worker spends per clip, and its rate
            metrics.update(
                {
                    "data/decode_ms_per_clip": 1e3 * decode_s / samples,
                    "data/augment_ms_per_clip": 1e3 * augment_s / samples,
                    "data/clips_per_s_per_worker": samples / worker_s,
                }
            )
        if device_s > 0:  # data.device_decode: the trainer's decoding, crop and flip
            metrics["data/device_decode_ms_per_clip"] = 1e3 * device_s / samples
        if token_sum > 0:
            metrics.update(
                {
                    "tokens_per_clip/mean": token_sum / samples,
                    "tokens_per_clip/min": low.item(),
                    "tokens_per_clip/max": high.item(),
                }
            )
        self._reset()
        return metrics


def _summed_over_ranks(counts: Counter[str], world_size: int) -> Counter[str]:
    """Skip counts by reason, summed over the ranks (reasons differ between ranks: gathered as objects)."""
    if world_size == 1:
        return Counter(counts)
    gathered: list[Counter[str] | None] = [None] * world_size
    dist.all_gather_object(gathered, counts)
    return sum((c for c in gathered if c), Counter())


def _tokens_per_clip(output: ModelOutput) -> torch.Tensor | None:
    if output.num_tokens is not None:
        return output.num_tokens
    if output.token_mask is not None:  # the segmenter: its non-empty trajectories
        return output.token_mask.sum(dim=-1)
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on this rank, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def format_line(
    step: int, total: int, lr: float, temperature: float | None, metrics: dict[str, float]
) -> str:
    """One human-readable log line (the same numbers go to MLflow)."""
    parts = " ".join(
        f"{k.removeprefix('loss/')} {v:.4f}" for k, v in metrics.items() if k.startswith("loss/")
    )
    line = f"step {step}/{total} | loss {metrics['loss']:.4f}{f' ({parts})' if parts else ''} | lr {lr:.2e}"
    if temperature is not None:
        line += f" | temp {temperature:.4f}"
    line += (
        f" | {metrics['samples_per_s']:.1f} samples/s ({metrics['samples_per_s_per_gpu']:.1f}/gpu)"
        f" | data wait {100 * metrics['data_wait_frac']:.1f}%"
    )
    if "tokens_per_clip/mean" in metrics:
        line += (
            f" | tokens/clip {metrics['tokens_per_clip/mean']:.1f}"
            f" [{metrics['tokens_per_clip/min']:.0f}, {metrics['tokens_per_clip/max']:.0f}]"
        )
    line += f" | mem {metrics['memory_gib']:.2f} GiB"
    if "data/clips_per_s_per_worker" in metrics:
        line += (
            f" | loader {metrics['data/decode_ms_per_clip']:.0f} ms decode + "
            f"{metrics['data/augment_ms_per_clip']:.0f} ms crop per clip, "
            f"{metrics['data/clips_per_s_per_worker']:.1f} clips/s per worker"
        )
    if "data/device_decode_ms_per_clip" in metrics:
        line += f", {metrics['data/device_decode_ms_per_clip']:.0f} ms per clip decoding on the device"
    if metrics["data/skipped"]:
        reasons = ", ".join(
            f"{k.rsplit('/', 1)[1]} {v:.0f}" for k, v in metrics.items() if k.startswith("data/skipped/")
        )
        line += f" | skipped {metrics['data/skipped']:.0f} samples ({reasons})"
    return line
