"""The efficiency harness: TrajViT2 against ViT3D and its token-reducing peers, per clip length, one run.

Models (`--models`), all with the same transformer, heads and text tower:
- `vit3d`: 2x16x16 tubelets; `vit3d+tome`: ToMe merging with r solved so that its forward FLOPs equal
  `trajvit2`'s in the same run ("equal FLOPs"); `vit3d+tome-tokens`: r set so that its mean tokens per block
  equal trajvit2's ("equal token budget"; ToMe merges at most half a block's tokens, so a budget below its
  reach gets the most merging r can give); `vit3d+rlt`: run-length tokenization (repeated tubelets dropped,
  `--rlt-threshold`);
- `trajvit2` (n = 1 token per trajectory), `trajvit2-n4` (n = 4), `trajvit2-chunk8` (long clips segmented
  in 8-frame chunks, one token set per chunk; the same as `trajvit2` up to 8 frames, so not run there),
  `trajvit2-dense` (n = 1, no packing: dense masks and every token slot through the transformer).
Clips are the built-in synthetic generator's (moving textured shapes over a panning background, with
their exact label maps on the logit grid), so what RLT drops and how many trajectories the segmenter makes
are those of a real scene, not of noise.

Timed (default), for each clip length T and model:
- training step clips/s: forward with text, the release loss (contrastive, plus focal and Dice with the
  Hungarian matching for trajvit2), backward, fused AdamW; bf16 autocast on a GPU;
- forward clips/s: the video tower in eval mode;
- step memory: on a GPU the measured peak of one step plus the model's weights, gradients and AdamW state;
  on a CPU the same static part plus the activations autograd saves (an estimate; CPU peaks are not tracked);
- tokens per clip (valid tokens that enter the transformer; for ToMe, the mean per block);
- training and forward GFLOPs per clip as they ran (torch's flop counter), MFU against the device's dense
  bf16 peak (on a CPU, the achieved GFLOP/s instead), and trajvit2's tokenizer share of the step time.
On a GPU the batch is the largest power of two whose training step fits ("fills the device"); models are
timed one after the other, repeated in rounds, and each number is the median of its rounds.

`--flops-only` times nothing: it builds each model on the meta device and counts its forward FLOPs per part
exactly, at any size in seconds, on any machine. TrajViT2's transformer is counted over
`--valid-trajectories` trajectories x n (x chunks), what the packed transformer runs; RLT's over the
tubelets it keeps on the synthetic clips.

    .venv/bin/trajtok bench model --flops-only --size paper --frames 8 16 32 64 128 \\
        --plot docs/img/efficiency_paper_flops.png
    .venv/bin/trajtok bench model --size small --px 112 --frames 8 16 --plot docs/img/efficiency_cpu_small.png
    bash bench/gpu.sh        # paper size on a GPU, bf16: one JSON (see the script)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_record, script_main, write_json  # noqa: E402

from trajtok.config import ClipConfig, LossConfig, ModelConfig  # noqa: E402
from trajtok.data.normalise import normalise_frames  # noqa: E402
from trajtok.data.synth import generate_clip  # noqa: E402
from trajtok.losses import EarlyMatching, segmentation_loss, total_loss  # noqa: E402
from trajtok.models.info import flop_counter  # noqa: E402
from trajtok.models.registry import build_model  # noqa: E402
from trajtok.models.rlt import tubelet_changes  # noqa: E402
from trajtok.models.sizes import MODEL_SIZES, TRANSFORMER_SIZES, resolve_size  # noqa: E402
from trajtok.models.text import build_tokenizer  # noqa: E402
from trajtok.models.tome import r_for_budget, tokens_per_block  # noqa: E402
from trajtok.models.vit3d import TubeletTokenizer  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s), most specific name first
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
ONE_TOKEN = {"tokens_per_trajectory": [1], "eval_tokens_per_trajectory": 1}
CHUNK_FRAMES = 8
MODELS = {  # label -> (registry name, model overrides); the ToMe rows get their r in the run
    "vit3d": ("vit3d", {}),
    "vit3d+tome": ("vit3d", {}),
    "vit3d+tome-tokens": ("vit3d", {}),
    "vit3d+rlt": ("vit3d", {}),  # rlt_threshold from the settings
    "trajvit2": ("trajvit2", ONE_TOKEN),
    "trajvit2-n4": ("trajvit2", {"tokens_per_trajectory": [4], "eval_tokens_per_trajectory": 4}),
    "trajvit2-chunk8": ("trajvit2", {**ONE_TOKEN, "segment_chunk_frames": CHUNK_FRAMES}),
    "trajvit2-dense": ("trajvit2", {**ONE_TOKEN, "packed": False}),
}
DISTINCT_CLIPS = 4  # synthetic clips rendered per batch; a larger batch repeats them
PARTS = {  # flop-counter module names -> the parts of the forward that BENCHMARKS.md reports
    "TubeletTokenizer": "tubelets",
    "RunLengthTokenizer": "tubelets",
    "TrajectoryTokenizer": "tokenizer",  # the trajectory encoder is what the tokenizer spends past these two:
    "TrajectoryTokenizer.segmenter.backbone": "backbone",  # with model.shared_kv that includes the one
    "TrajectoryTokenizer.segmenter.head": "segmenter",  # key/value projection both Perceivers read
    "Transformer": "transformer",
    "ToMeTransformer": "transformer",
}


@dataclass
class Settings:
    size: str = "tiny"
    transformer: str = ""  # "" = the size's own
    frames: list[int] = field(default_factory=lambda: [8, 16])
    px: int = 224
    batch: int = 0  # 0: fill the GPU (largest power of two that fits); 2 on a CPU
    models: list[str] = field(
        default_factory=lambda: [
            "vit3d",
            "vit3d+tome",
            "vit3d+rlt",
            "trajvit2",
            "trajvit2-n4",
            "trajvit2-chunk8",
        ]
    )
    steps: int = 5  # timed steps per round
    warmup: int = 2
    rounds: int = 3
    precision: str = "auto"  # bf16 autocast on a GPU, fp32 on a CPU (bf16 is slower on most CPUs)
    compile: bool = False
    channels_last: bool = False
    pooled_read: bool = True  # the model's defaults
    shared_kv: bool = False
    rlt_threshold: float = 0.1
    valid_trajectories: int = (
        30  # --flops-only: trajectories that win pixels (what the packed transformer runs)
    )
    max_batch: int = 512

    def model_config(self, label: str, **extra) -> ModelConfig:
        name, overrides = MODELS[label]
        options = {"rlt_threshold": self.rlt_threshold} if label == "vit3d+rlt" else {}
        if name == "trajvit2":
            options = {"pooled_read": self.pooled_read, "shared_kv": self.shared_kv}
        return ModelConfig(
            name=name,
            size=self.size,
            transformer=self.transformer,
            compile=self.compile,
            channels_last=self.channels_last,
            **overrides,
            **options,
            **extra,
        )

    def runs_at(self, label: str, frames: int) -> bool:
        """Chunked trajvit2 only where the clip is longer than a chunk (else it is plain trajvit2)."""
        return label != "trajvit2-chunk8" or (frames > CHUNK_FRAMES and frames % CHUNK_FRAMES == 0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_clips(count: int, frames: int, px: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`count` clips of the built-in generator: uint8 frames (B, T, 3, px, px), their exact label maps on the
    logit grid (B, T, px/4, px/4; the loader gives labels at that size too) and captions."""
    clips = [generate_clip(seed, frames, px, px) for seed in range(count)]
    video = torch.from_numpy(np.stack([clip.frames for clip in clips])).permute(0, 1, 4, 2, 3)
    labels = torch.from_numpy(np.stack([clip.labels for clip in clips]).astype(np.int64))
    return video, labels[:, :, 2::4, 2::4].contiguous(), [clip.caption for clip in clips]


def make_batch(batch: int, frames: int, px: int, device: torch.device) -> dict:
    """`DISTINCT_CLIPS` synthetic clips repeated to `batch`: normalised frames, captions, label maps (labels
    stay on the CPU, as the loader gives them)."""
    video, labels, captions = synthetic_clips(min(batch, DISTINCT_CLIPS), frames, px)
    pick = torch.arange(batch) % len(captions)
    ids, mask = build_tokenizer("bytes").encode_batch([captions[i] for i in pick], ModelConfig().text_max_len)
    return {
        "frames": normalise_frames(video[pick], device),
        "ids": ids.to(device),
        "mask": mask.to(device),
        "labels": labels[pick],
    }


def static_bytes(model: torch.nn.Module) -> int:
    """Weights, gradients and the two AdamW moments: what training holds whatever the batch."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


class Workload:
    """One model, its fused AdamW and one fixed batch: runs training steps, forwards and tokenizer passes.

    The step has no host synchronisation but the Hungarian matching's wait for the segmenter's ids, which
    `EarlyMatching` queues right after the segmenter so the rest of the forward hides it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch: dict,
        settings: Settings,
        device: torch.device,
        matching: EarlyMatching | None = None,
    ):
        self.model, self.batch, self.device, self.matching = model, batch, device, matching
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        self.loss_cfg = LossConfig()
        self.autocast = lambda: torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"
        )

    @property
    def clips(self) -> int:
        return self.batch["frames"].shape[0]

    def train_step(self) -> None:
        b = self.batch
        with self.autocast():
            out = self.model(b["frames"], b["ids"], b["mask"])
            targets = self.matching.targets(b["labels"]) if self.matching else None
            loss = total_loss(out, b["labels"], self.loss_cfg, "joint", seg_targets=targets)["loss"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def forward(self, counting: bool = False) -> None:
        """The video tower in eval mode; `counting`: with autograd on, which torch's flop counter needs."""
        self.model.eval()
        with torch.set_grad_enabled(counting), self.autocast():
            self.model.encode_video(self.batch["frames"])
        self.model.train()

    def tokenizer_pass(self) -> None:
        """TrajViT2's segmenter and trajectory encoder alone, forward and backward, with their losses."""
        b = self.batch
        with self.autocast():
            video = self.model.tokenizer(b["frames"])
            segmentation = video.segmentation
            targets = self.matching.targets(b["labels"])
            focal, dice = segmentation_loss(
                segmentation.logits, b["labels"], segmentation.grid, targets=targets
            )
            loss = (
                self.loss_cfg.focal * focal + self.loss_cfg.dice * dice + video.tokens.float().square().mean()
            )
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    def seconds(self, work: Callable[[], None], calls: int) -> float:
        """Wall seconds per call, synchronising only around the whole loop."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(calls):
            work()
        synchronize(self.device)
        return (time.perf_counter() - start) / calls

    def step_memory(self) -> float:
        """GiB one training step needs (see the module docstring for what is measured where)."""
        if self.device.type == "cuda":
            synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.train_step()
            synchronize(self.device)
            transient = torch.cuda.max_memory_allocated(self.device) - before
        else:
            transient = saved_activation_bytes(self.train_step, self.model)
        return (transient + static_bytes(self.model)) / 2**30

    def flops_per_clip(self, work: Callable[[], None]) -> float:
        with flop_counter() as counter:
            work()
        return counter.get_total_flops() / self.clips

    def token_counts(self) -> tuple[float, int]:
        """Valid video tokens per clip in training (what the packed transformer runs) and the slots."""
        with torch.no_grad(), self.autocast():
            video = self.model.tokenizer(self.batch["frames"])
        if video.mask is None:
            return float(video.tokens.shape[1]), video.tokens.shape[1]
        return float(video.mask.sum(-1).float().mean()), video.mask.shape[1]


def saved_activation_bytes(work: Callable[[], None], model: torch.nn.Module) -> int:
    """Bytes of the distinct tensors autograd saves for backward during `work`, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        work()
    return sum(saved.values())


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def largest_batch(make: Callable[[int], Workload], model: torch.nn.Module, limit: int) -> int:
    """The largest power of two (up to `limit`) whose training step fits on the GPU."""
    fits, batch = 0, 1
    while batch <= limit:
        try:
            workload = make(batch)
            workload.train_step()
            workload.train_step()
            synchronize(workload.device)
            fits = batch
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            workload = None
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        batch *= 2
    if not fits:
        raise RuntimeError("not even one clip fits on the GPU")
    return fits


def build(settings: Settings, label: str, frames: int, device: torch.device, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    clip = ClipConfig(frames=frames, size=settings.px)
    return build_model(settings.model_config(label, **extra), clip).to(device).train()


def measure_clip_length(settings: Settings, frames: int, device: torch.device) -> list[dict]:
    """Every model at one clip length: rows of the result table, with ratios to vit3d."""
    wanted = [label for label in settings.models if settings.runs_at(label, frames)]
    tome = {"vit3d+tome", "vit3d+tome-tokens"} & set(wanted)
    labels = ["trajvit2"] * bool(tome and "trajvit2" not in wanted) + wanted  # ToMe needs trajvit2's figures
    labels.sort(key=lambda label: label.startswith("vit3d+tome"))  # ... measured first
    workloads: dict[str, Workload] = {}
    rows: dict[str, dict] = {}
    for label in labels:
        extra = {}
        if label == "vit3d+tome":
            extra["tome_r"] = tome_r_for_flops(settings, frames, rows["trajvit2"]["forward_gflops_per_clip"])
        elif label == "vit3d+tome-tokens":
            budget = workloads["trajvit2"].token_counts()[0]
            extra["tome_r"] = r_for_budget(vit3d_tokens(frames, settings.px), depth(settings), budget)
        model = build(settings, label, frames, device, **extra)
        segmenter = getattr(model.tokenizer, "segmenter", None)
        matching = EarlyMatching(segmenter.head) if segmenter is not None else None

        def make(batch: int, model: torch.nn.Module = model, matching=matching) -> Workload:
            return Workload(model, make_batch(batch, frames, settings.px, device), settings, device, matching)

        batch = settings.batch or (
            largest_batch(make, model, settings.max_batch) if device.type == "cuda" else 2
        )
        workload = workloads[label] = make(batch)
        torch.manual_seed(0)
        for _ in range(settings.warmup):
            workload.train_step()
            workload.forward()
        rows[label] = {
            "model": label,
            "frames": frames,
            "batch": batch,
            "tome_r": extra.get("tome_r", 0),
            "step_memory_gib": workload.step_memory(),
            "train_gflops_per_clip": workload.flops_per_clip(workload.train_step) / 1e9,
            "forward_gflops_per_clip": workload.flops_per_clip(partial(workload.forward, counting=True))
            / 1e9,
        }
    timings = time_rounds(settings, workloads)
    for label, row in rows.items():
        row.update(timings[label])
        row.update(token_columns(label, workloads[label], settings, frames, row["tome_r"]))
        row.update(efficiency(row, device))
    return [add_ratios(rows[label], rows.get("vit3d")) for label in wanted]


def time_rounds(settings: Settings, workloads: dict[str, Workload]) -> dict[str, dict]:
    """Median seconds per step, forward and tokenizer pass over `rounds` rounds that take turns per model."""
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in workloads}
    jobs = [(label, kind) for label, w in workloads.items() for kind in kinds(w)]
    for round_index in tqdm(range(settings.rounds), desc="rounds", leave=False):
        for label, kind in jobs:
            workload = workloads[label]
            torch.manual_seed(round_index)  # every trajvit2 variant draws the same tokens per trajectory
            work = getattr(workload, kind)
            samples[label].setdefault(kind, []).append(workload.seconds(work, settings.steps))
    out = {}
    for label, by_kind in samples.items():
        clips = workloads[label].clips
        step, forward = statistics.median(by_kind["train_step"]), statistics.median(by_kind["forward"])
        out[label] = {
            "step_seconds": step,
            "train_clips_per_s": clips / step,
            "forward_clips_per_s": clips / forward,
        }
        if "tokenizer_pass" in by_kind:
            out[label]["tokenizer_share"] = statistics.median(by_kind["tokenizer_pass"]) / step
    return out


def kinds(workload: Workload) -> list[str]:
    return ["train_step", "forward", *(["tokenizer_pass"] if workload.matching else [])]


def vit3d_tokens(frames: int, px: int) -> int:
    return TubeletTokenizer.num_tokens(frames, px, px)


def depth(settings: Settings) -> int:
    return TRANSFORMER_SIZES[settings.transformer or resolve_size(settings.size).transformer].depth


def token_columns(label: str, workload: Workload, settings: Settings, frames: int, r: int) -> dict:
    tubelets = vit3d_tokens(frames, settings.px)
    if not label.startswith("vit3d+tome"):
        tokens, slots = workload.token_counts()
        return {"tokens_per_clip": tokens, "token_slots": slots}
    per_block = tokens_per_block(tubelets, depth(settings), r)
    return {"tokens_per_clip": sum(per_block) / len(per_block), "token_slots": tubelets}


def efficiency(row: dict, device: torch.device) -> dict:
    achieved = row["train_gflops_per_clip"] * row["train_clips_per_s"] / 1e3  # TFLOP/s
    peak = peak_tflops(device)
    return {"achieved_tflops": achieved, "mfu": None if peak is None else achieved / peak}


def add_ratios(row: dict, reference: dict | None) -> dict:
    if reference is not None:
        row["vs_vit3d"] = {
            "train": row["train_clips_per_s"] / reference["train_clips_per_s"],
            "forward": row["forward_clips_per_s"] / reference["forward_clips_per_s"],
            "memory": row["step_memory_gib"] / reference["step_memory_gib"],
        }
    return row


def run(settings: Settings, device: torch.device, command: list[str]) -> dict:
    """Measure every clip length; returns the run record and the rows."""
    if settings.precision == "auto":
        settings = replace(settings, precision="bf16" if device.type == "cuda" else "fp32")
    rows = []
    for frames in tqdm(settings.frames, desc="clip lengths"):
        rows.extend(measure_clip_length(settings, frames, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"record": run_record(command, device), "settings": asdict(settings), "rows": rows}


def forward_flops_by_part(
    settings: Settings, label: str, frames: int, tome_r: int = 0
) -> tuple[dict[str, float], float]:
    """Forward GFLOPs of one clip through the video tower, per part, counted on the meta device, and the
    tokens its transformer runs (see `transformer_tokens`)."""
    model_cfg = replace(settings.model_config(label), compile=False, channels_last=False, tome_r=tome_r)
    with torch.device("meta"):
        model = build_model(model_cfg, ClipConfig(frames=frames, size=settings.px)).eval()
        clip = torch.zeros(1, frames, 3, settings.px, settings.px)
        with flop_counter() as counter:
            video = model.tokenizer(clip)
            tokens = transformer_tokens(settings, label, frames, video.tokens)
            model.video_head(model.transformer(tokens)[:, 0])
    by_part = {"total": counter.get_total_flops() / 1e9}
    for module, per_op in counter.get_flop_counts().items():
        if module in PARTS:
            by_part[PARTS[module]] = by_part.get(PARTS[module], 0.0) + sum(per_op.values()) / 1e9
    if "tokenizer" in by_part:
        by_part["trajectory encoder"] = by_part["tokenizer"] - by_part["backbone"] - by_part["segmenter"]
    return by_part, tokens.shape[1]


def transformer_tokens(settings: Settings, label: str, frames: int, slots: torch.Tensor) -> torch.Tensor:
    """What the packed transformer runs for one clip, as a (1, L, W) meta tensor: every tubelet for vit3d
    (ToMe merges inside), the tubelets RLT keeps on the synthetic clips, and `valid_trajectories` x n per
    chunk for trajvit2 (all K x n slots for the unpacked `trajvit2-dense`)."""
    name, overrides = MODELS[label]
    if label == "vit3d+rlt":
        return slots[:, : rlt_kept_tokens(settings, frames)]
    if name != "trajvit2" or overrides.get("packed") is False:
        return slots
    chunks = frames // CHUNK_FRAMES if overrides.get("segment_chunk_frames") else 1
    queries = resolve_size(settings.size).num_queries
    count = min(settings.valid_trajectories, queries) * overrides["eval_tokens_per_trajectory"] * chunks
    return slots[:, :count]


def rlt_kept_tokens(settings: Settings, frames: int) -> int:
    """Tubelets RLT keeps, the mean over `DISTINCT_CLIPS` synthetic clips (rounded)."""
    video, _, _ = synthetic_clips(DISTINCT_CLIPS, frames, settings.px)
    changes = tubelet_changes(normalise_frames(video, torch.device("cpu")))
    return round(float((changes > settings.rlt_threshold).flatten(1).sum(1).float().mean()))


def tome_r_for_flops(settings: Settings, frames: int, target_gflops: float) -> int:
    """The smallest ToMe r whose forward GFLOPs (meta device, exact) are at most `target_gflops`; the most
    merging r can give (half of the tokens per block) when even that costs more."""
    low, high = 0, vit3d_tokens(frames, settings.px) // 2
    while low < high:  # FLOPs fall as r grows
        middle = (low + high) // 2
        if forward_flops_by_part(settings, "vit3d+tome", frames, middle)[0]["total"] <= target_gflops:
            high = middle
        else:
            low = middle + 1
    return low


def run_flops(settings: Settings, command: list[str]) -> dict:
    """Forward GFLOPs per part and tokens of every model at every clip length; ToMe at equal FLOPs to
    trajvit2 (n = 1) and at its token budget."""
    rows = []
    for frames in tqdm(settings.frames, desc="clip lengths"):
        tubelets = vit3d_tokens(frames, settings.px)
        reference, trajvit2_tokens = forward_flops_by_part(settings, "trajvit2", frames)
        tome_r = {
            "vit3d+tome": tome_r_for_flops(settings, frames, reference["total"]),
            "vit3d+tome-tokens": r_for_budget(tubelets, depth(settings), trajvit2_tokens),
        }
        by_label = {}
        for label in settings.models:
            if not settings.runs_at(label, frames):
                continue
            r = tome_r.get(label, 0)
            gflops, tokens = forward_flops_by_part(settings, label, frames, r)
            if r:
                per_block = tokens_per_block(tubelets, depth(settings), r)
                tokens = sum(per_block) / len(per_block)
            by_label[label] = {
                "model": label,
                "frames": frames,
                "tome_r": r,
                "tokens_per_clip": tokens,
                "forward_gflops": gflops,
            }
        vit3d = by_label.get("vit3d")
        for row in by_label.values():
            if vit3d is not None:
                row["vs_vit3d"] = row["forward_gflops"]["total"] / vit3d["forward_gflops"]["total"]
            rows.append(row)
    return {
        "record": run_record(command, torch.device("meta")),
        "settings": asdict(settings),
        "flops_rows": rows,
    }


def flops_markdown(result: dict) -> str:
    parts = ["tubelets", "backbone", "segmenter", "trajectory encoder", "transformer"]
    head = ["T", "model", "tokens/clip", "forward GFLOPs/clip", "x vit3d", *parts, "tokenizer share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["flops_rows"]:
        name = row["model"] + (f" (r={row['tome_r']})" if row["tome_r"] else "")
        gflops = row["forward_gflops"]
        shares = [f"{gflops[p]:.1f}" if p in gflops else "" for p in parts]
        cells = [row["frames"], name, f"{row['tokens_per_clip']:.0f}", f"{gflops['total']:.1f}"]
        share = f"{gflops['tokenizer'] / gflops['total']:.0%}" if "tokenizer" in gflops else ""
        cells += [f"{row.get('vs_vit3d', 1):.2f}", *shares, share]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    record = result["record"]
    lines += [
        "",
        f"`{record['command']}`, {record['date']}, commit {record['commit']} (meta device: no compute)",
    ]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The result table as BENCHMARKS.md shows it."""
    on_gpu = result["rows"] and result["rows"][0].get("mfu") is not None
    head = [
        "T", "model", "batch", "tokens/clip", "train clips/s", "x vit3d", "fwd clips/s", "x vit3d",
        "step mem GiB", "x vit3d", "train GFLOPs/clip", "MFU" if on_gpu else "TFLOP/s", "tokenizer share",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        ratio = row.get("vs_vit3d", {})
        name = row["model"] + (f" (r={row['tome_r']})" if row["tome_r"] else "")
        cells = [
            row["frames"], name, row["batch"], f"{row['tokens_per_clip']:.0f}",
            f"{row['train_clips_per_s']:.2f}", f"{ratio.get('train', 1):.2f}",
            f"{row['forward_clips_per_s']:.2f}", f"{ratio.get('forward', 1):.2f}",
            f"{row['step_memory_gib']:.2f}", f"{ratio.get('memory', 1):.2f}",
            f"{row['train_gflops_per_clip']:.1f}",
            f"{row['mfu']:.1%}" if on_gpu else f"{row['achieved_tflops']:.3f}",
            f"{row['tokenizer_share']:.0%}" if "tokenizer_share" in row else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    record = result["record"]
    lines.append("")
    lines.append(f"`{record['command']}` on {record['device']}, {record['date']}, commit {record['commit']}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Log-log lines against clip length: forward GFLOPs per clip, and (timed runs) training clips/s."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import NullFormatter

    timed = "rows" in result
    rows = result["rows"] if timed else result["flops_rows"]
    panels = [("forward GFLOPs per clip", "forward_gflops_per_clip" if timed else None)]
    if timed:
        panels.append(("training clips/s", "train_clips_per_s"))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (title, key) in zip(axes[0], panels, strict=True):
        for label in dict.fromkeys(row["model"] for row in rows):
            mine = [row for row in rows if row["model"] == label]
            values = [row[key] if key else row["forward_gflops"]["total"] for row in mine]
            style = "--" if label.startswith("vit3d+") else "-"  # peers dashed: ToMe at equal FLOPs overlays
            axis.plot([row["frames"] for row in mine], values, style, marker="o", label=label)
        axis.set(xscale="log", yscale="log", xlabel="frames per clip (T)", title=title)
        axis.set_xticks(result["settings"]["frames"], labels=map(str, result["settings"]["frames"]))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    settings, record = result["settings"], result["record"]
    device = "meta device (exact counts)" if not timed else record["device"]
    title = f"size {settings['size']}, {settings['px']} px, {device}, {record['date']}"
    figure.suptitle(textwrap.fill(title, 60 * len(panels)), fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--size", default=defaults.size, choices=sorted(MODEL_SIZES), help="model size")
    parser.add_argument(
        "--transformer",
        default="",
        choices=["", *TRANSFORMER_SIZES],
        help="transformer size (default: the size's)",
    )
    parser.add_argument("--frames", type=int, nargs="+", default=defaults.frames, help="clip lengths T")
    parser.add_argument("--px", type=int, default=defaults.px, help="frame side in pixels (multiple of 16)")
    parser.add_argument("--batch", type=int, default=0, help="clips per step; 0 = fill the GPU (2 on a CPU)")
    parser.add_argument("--models", nargs="+", default=defaults.models, choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds; numbers are medians")
    parser.add_argument(
        "--precision", default=defaults.precision, choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on a GPU, fp32 on a CPU",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if any")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model part")
    parser.add_argument("--channels-last", action="store_true", help="NHWC backbone convolutions")
    parser.add_argument(
        "--pooled-read", action=argparse.BooleanOptionalAction, default=defaults.pooled_read,
        help="trajvit2: model.pooled_read",
    )  # fmt: skip
    parser.add_argument(
        "--shared-kv", action=argparse.BooleanOptionalAction, default=defaults.shared_kv,
        help="trajvit2: model.shared_kv",
    )  # fmt: skip
    parser.add_argument(
        "--rlt-threshold", type=float, default=defaults.rlt_threshold, help="vit3d+rlt: model.rlt_threshold"
    )
    parser.add_argument(
        "--valid-trajectories", type=int, default=defaults.valid_trajectories,
        help="--flops-only: trajectories per clip (per chunk) the packed transformer runs",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="count forward FLOPs per part on the meta device, time nothing",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--plot", type=Path, help="also draw the result against T as a PNG here")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return replace(
        Settings(),
        size=args.size,
        transformer=args.transformer,
        frames=args.frames,
        px=args.px,
        batch=args.batch,
        models=args.models,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        pooled_read=args.pooled_read,
        shared_kv=args.shared_kv,
        rlt_threshold=args.rlt_threshold,
        valid_trajectories=args.valid_trajectories,
    )


def main(args: argparse.Namespace, command: list[str]) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.flops_only:
        result = run_flops(settings_from_args(args), command)
        print(flops_markdown(result))
    else:
        result = run(settings_from_args(args), device, command)
        print(markdown(result))
    if args.plot:
        plot(result, args.plot)
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
