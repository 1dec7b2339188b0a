"""Model throughput: TrajViT2 against ViT3D and ToMe-merged ViT3D with the same transformer, per clip length.

For each clip length T and each model, in one run (ratios are only meaningful within a run):
- training step clips/s: forward with text, the release loss (contrastive, plus focal and Dice with the
  Hungarian matching for trajvit2), backward, fused AdamW; bf16 autocast by default;
- forward clips/s: the video tower in eval mode (n = model.eval_tokens_per_trajectory);
- step memory: on a GPU the measured peak of one step plus the model's weights, gradients and AdamW state;
  on a CPU the same static part plus the activations autograd saves (an estimate; CPU peaks are not tracked);
- tokens per clip: valid trajectory tokens for trajvit2, tubelets for vit3d, the mean tokens per
  transformer block for ToMe (whose r is set so that mean matches trajvit2's tokens in this run, the
  "equal token budget"; ToMe merges at most half of a block's tokens, so a budget below its reach gets the
  most merging r can give);
- training GFLOPs per clip (torch's flop counter, forward + backward) and MFU against the device's dense
  bf16 peak (on a CPU, the achieved GFLOP/s instead);
- trajvit2's tokenizer share: the segmenter and trajectory encoder's forward and backward (with the
  segmentation loss) as a fraction of the whole step.
On a GPU the batch is the largest power of two whose training step fits ("fills the device"); models are
timed one after the other, repeated in rounds, and each number is the median of its rounds.

`--flops-only` times nothing: it builds each model on the meta device and counts its forward FLOPs per part
(tubelets or backbone, segmenter, trajectory encoder, transformer) at any size in seconds, on any machine:
the ratios a GPU could at best show when every part ran at the same efficiency.

    .venv/bin/trajtok bench model --size base --frames 8 16 32 64            # one H100: see BENCHMARKS.md
    .venv/bin/trajtok bench model --size small --px 112 --frames 8 16 --batch 2   # CPU
    .venv/bin/trajtok bench model --flops-only --size base --frames 8 16 32 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_record, script_main, write_json  # noqa: E402

from trajtok.config import ClipConfig, LossConfig, ModelConfig  # noqa: E402
from trajtok.losses import EarlyMatching, segmentation_loss, total_loss  # noqa: E402
from trajtok.models.info import flop_counter  # noqa: E402
from trajtok.models.registry import build_model  # noqa: E402
from trajtok.models.sizes import MODEL_SIZES, TRANSFORMER_SIZES, resolve_size  # noqa: E402
from trajtok.models.text import build_tokenizer  # noqa: E402
from trajtok.models.tome import r_for_budget, tokens_per_block  # noqa: E402
from trajtok.models.vit3d import TubeletTokenizer  # noqa: E402

# dense bf16 tensor-core peaks (TFLOP/s), most specific name first
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
MODELS = {  # label -> (registry name, model overrides); "vit3d+tome" gets its r from trajvit2's tokens
    "vit3d": ("vit3d", {}),
    "trajvit2": ("trajvit2", {}),
    "vit3d+tome": ("vit3d", {}),
    "trajvit2-dense": ("trajvit2", {"packed": False}),
}
LABEL_BLOCKS = 8  # label maps: an 8 x 8 grid of trajectories that stay put (a speed proxy, not a scene)
PARTS = {  # flop-counter module names -> the parts of the forward that BENCHMARKS.md reports
    "TubeletTokenizer": "tubelets",
    "TrajectoryTokenizer.segmenter.backbone": "backbone",
    "TrajectoryTokenizer.segmenter.head": "segmenter",
    "TrajectoryTokenizer.encoder": "trajectory encoder",
    "TrajectoryTokenizer.project": "trajectory encoder",
    "Transformer": "transformer",
    "ToMeTransformer": "transformer",
}


@dataclass
class Settings:
    size: str = "tiny"
    frames: list[int] = field(default_factory=lambda: [8, 16])
    px: int = 224
    batch: int = 0  # 0: fill the GPU (largest power of two that fits); 2 on a CPU
    models: list[str] = field(default_factory=lambda: ["vit3d", "trajvit2", "vit3d+tome"])
    steps: int = 5  # timed steps per round
    warmup: int = 2
    rounds: int = 3
    precision: str = "auto"  # bf16 autocast on a GPU, fp32 on a CPU (bf16 is slower on most CPUs)
    compile: bool = False
    channels_last: bool = False
    tokens_per_trajectory: list[int] = field(default_factory=lambda: [1, 2, 4])
    max_batch: int = 512

    def model_config(self, label: str, **extra) -> ModelConfig:
        name, overrides = MODELS[label]
        return ModelConfig(
            name=name,
            size=self.size,
            tokens_per_trajectory=list(self.tokens_per_trajectory),
            compile=self.compile,
            channels_last=self.channels_last,
            **overrides,
            **extra,
        )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(batch: int, frames: int, px: int, device: torch.device) -> dict:
    """Normalised random frames, captions and block label maps on the logit grid (labels stay on the CPU,
    as the loader gives them)."""
    grid = px // 4
    block = torch.arange(grid) * LABEL_BLOCKS // grid
    labels = (block[:, None] * LABEL_BLOCKS + block[None, :] + 1).expand(batch, frames, grid, grid)
    captions = [f"clip {i}: someone walks past a lamp post" for i in range(batch)]
    ids, mask = build_tokenizer("bytes").encode_batch(captions, ModelConfig().text_max_len)
    return {
        "frames": torch.randn(batch, frames, 3, px, px, device=device),
        "ids": ids.to(device),
        "mask": mask.to(device),
        "labels": labels.contiguous(),
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

    def mean_tokens(self) -> float:
        """TrajViT2's valid tokens per clip in training, averaged over the n it draws from."""
        encoder = self.model.tokenizer.encoder
        choices = encoder.train_tokens_per_trajectory
        counts = []
        with torch.no_grad(), self.autocast():
            for n in choices:
                encoder.train_tokens_per_trajectory = (n,)
                counts.append(self.model.tokenizer(self.batch["frames"]).mask.sum(-1).float().mean())
        encoder.train_tokens_per_trajectory = choices
        return float(torch.stack(counts).mean())


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
    needs_trajvit2 = "trajvit2" in settings.models or "vit3d+tome" in settings.models  # ToMe's budget
    labels = ["trajvit2"] * needs_trajvit2 + [m for m in settings.models if m != "trajvit2"]
    workloads: dict[str, Workload] = {}
    rows: dict[str, dict] = {}
    for label in labels:
        extra = {}
        if label == "vit3d+tome":
            budget = workloads["trajvit2"].mean_tokens()
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
    return [add_ratios(rows[label], rows.get("vit3d")) for label in labels if label in settings.models]


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
    return TRANSFORMER_SIZES[resolve_size(settings.size).transformer].depth


def token_columns(label: str, workload: Workload, settings: Settings, frames: int, r: int) -> dict:
    if label.startswith("trajvit2"):
        slots = resolve_size(settings.size).num_queries * max(settings.tokens_per_trajectory)
        return {"tokens_per_clip": workload.mean_tokens(), "token_slots": slots}
    tubelets = vit3d_tokens(frames, settings.px)
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


def forward_flops_by_part(settings: Settings, label: str, frames: int, tome_r: int = 0) -> dict[str, float]:
    """Forward GFLOPs of one clip through the video tower, per part, counted on the meta device."""
    model_cfg = replace(settings.model_config(label), compile=False, channels_last=False, tome_r=tome_r)
    with torch.device("meta"):
        model = build_model(model_cfg, ClipConfig(frames=frames, size=settings.px)).eval()
        clip = torch.zeros(1, frames, 3, settings.px, settings.px)
        with flop_counter() as counter:
            model.encode_video(clip)
    by_part = {"total": counter.get_total_flops() / 1e9}
    for module, per_op in counter.get_flop_counts().items():
        if module in PARTS:
            by_part[PARTS[module]] = by_part.get(PARTS[module], 0.0) + sum(per_op.values()) / 1e9
    return by_part


def run_flops(settings: Settings, command: list[str]) -> dict:
    """Forward GFLOPs per part and tokens of every model at every clip length; ToMe at trajvit2's K*n."""
    size = resolve_size(settings.size)
    budget = size.num_queries * ModelConfig().eval_tokens_per_trajectory
    rows = []
    for frames in settings.frames:
        tubelets = vit3d_tokens(frames, settings.px)
        r = r_for_budget(tubelets, depth(settings), budget)
        tokens = {
            "vit3d": tubelets,
            "vit3d+tome": sum(tokens_per_block(tubelets, depth(settings), r)) / depth(settings),
        }
        by_label = {}
        for label in settings.models:
            by_label[label] = {
                "model": label,
                "frames": frames,
                "tome_r": r if label == "vit3d+tome" else 0,
                "tokens_per_clip": tokens.get(label, budget),
                "forward_gflops": forward_flops_by_part(
                    settings, label, frames, r if label == "vit3d+tome" else 0
                ),
            }
        reference = by_label.get("vit3d")
        for row in by_label.values():
            if reference is not None:
                row["vs_vit3d"] = row["forward_gflops"]["total"] / reference["forward_gflops"]["total"]
            rows.append(row)
    return {
        "record": run_record(command, torch.device("meta")),
        "settings": asdict(settings),
        "flops_rows": rows,
    }


def flops_markdown(result: dict) -> str:
    parts = ["tubelets", "backbone", "segmenter", "trajectory encoder", "transformer"]
    head = ["T", "model", "tokens/clip", "forward GFLOPs/clip", "x vit3d", *parts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["flops_rows"]:
        name = row["model"] + (f" (r={row['tome_r']})" if row["tome_r"] else "")
        gflops = row["forward_gflops"]
        shares = [f"{gflops[p]:.1f}" if p in gflops else "" for p in parts]
        cells = [row["frames"], name, f"{row['tokens_per_clip']:.0f}", f"{gflops['total']:.1f}"]
        cells += [f"{row.get('vs_vit3d', 1):.2f}", *shares]
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    parser.add_argument("--size", default=defaults.size, choices=sorted(MODEL_SIZES), help="model size")
    parser.add_argument("--frames", type=int, nargs="+", default=defaults.frames, help="clip lengths T")
    parser.add_argument("--px", type=int, default=defaults.px, help="frame side in pixels (multiple of 16)")
    parser.add_argument("--batch", type=int, default=0, help="clips per step; 0 = fill the GPU (2 on a CPU)")
    parser.add_argument("--models", nargs="+", default=defaults.models, choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="rounds; numbers are medians")
    parser.add_argument(
        "--precision", default=defaults.precision, choices=["auto", "bf16", "fp32"],
        help="auto: bf16 autocast on a GPU, fp32 on a CPU",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile each model part")
    parser.add_argument("--channels-last", action="store_true", help="NHWC backbone convolutions")
    parser.add_argument(
        "--tokens-per-trajectory", type=int, nargs="+", default=defaults.tokens_per_trajectory,
        help="trajvit2's n, drawn per training step from these",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="count forward FLOPs per part on the meta device, time nothing",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return replace(
        Settings(),
        size=args.size,
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
        tokens_per_trajectory=args.tokens_per_trajectory,
    )


def main(args: argparse.Namespace, command: list[str]) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.flops_only:
        result = run_flops(settings_from_args(args), command)
        print(flops_markdown(result))
    else:
        result = run(settings_from_args(args), device, command)
        print(markdown(result))
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    script_main(__doc__, add_arguments, main)
