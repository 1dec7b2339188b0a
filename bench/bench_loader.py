"""Training loader speed: clips/s per worker at 16 frames, 224 px, with augmentation, and the share of a
training step spent waiting for data (`trajvit2` small on CPU, 2 loader workers; target < 5%).

The shards are made the way users make them: `trajtok synth` videos, then `trajtok shard` (16 frames, short
side 256, classical labels). Then, on the same shards:
- per worker: one reader in this process (`data.num_workers=0`) building augmented batches;
- its parts per clip: `decode_sample` (H.264 + label map) and `augment_clip` (crop, resize, flip and the
  colour draws: what a worker does);
- the colour changes on the device (`apply_colour`, here the CPU) for the training run's batch, against the
  step time of that run;
- the DataLoader with 1 and 2 worker processes;
- data wait: `trajtok train` of trajvit2 small (1 process, 2 workers), read back from its MLflow run.

    .venv/bin/python bench/bench_loader.py --json bench-loader.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, run_record, write_json  # noqa: E402

from trajtok.config import JobConfig, load_config  # noqa: E402
from trajtok.data.augment import AugmentParams, augment_clip, colour_draws  # noqa: E402
from trajtok.data.colour import apply_colour  # noqa: E402
from trajtok.data.loader import build_loader, expand_shards, read_shard  # noqa: E402
from trajtok.data.sample import decode_sample  # noqa: E402

TRAJTOK = [sys.executable, "-m", "launch.cli"]


TRAIN_BATCH = 2  # clips per step of the trajvit2 small CPU run


def make_shards(work: Path, clips: int) -> str:
    """`trajtok synth` + `trajtok shard`: 16-frame clips, short side 256, classical labels."""
    synth = [
        "synth",
        f"synth.out={work / 'synth'}",
        f"synth.videos={clips}",
        "synth.frames=16",
        "synth.height=256",
        "synth.width=320",
    ]
    shard = [
        "shard",
        str(REPO_ROOT / "configs" / "shard.yaml"),
        f"manifest={work / 'synth' / 'manifest.jsonl'}",
        f"out={work / 'shards'}",
        f"run_dir={work / 'shard-run'}",
        "clip.frames=16",
        "clip.size=256",
        "pipeline.clips_per_shard=8",
        "tracking.enabled=false",
    ]
    for command in (synth, shard):
        subprocess.run([*TRAJTOK, *command], check=True, cwd=work, capture_output=True)
    return str(work / "shards" / "shard-*.tar")


def loader_config(shards: str, workers: int, *extra: str) -> JobConfig:
    return load_config(
        REPO_ROOT / "configs" / "train" / "trajvit2.yaml",
        [
            f"data.shards={shards}",
            f"data.num_workers={workers}",
            "data.shuffle_buffer=16",
            "clip.frames=16",
            "clip.size=224",
            "train.batch_size=4",
            "data.samples_per_epoch=100000",
            "data.grey=0.1",
            "data.blur=0.1",
            *extra,
        ],
    )


def clips_per_second(cfg: JobConfig, batches: int, device_formats: frozenset[str] = frozenset()) -> float:
    """Clips/s after the first batch (worker start-up and the shuffle buffer's first fill excluded);
    frames in `device_formats` are left encoded for the trainer."""
    loader, _ = build_loader(cfg, rank=0, world_size=1, device_formats=device_formats)
    stream = iter(loader)
    next(stream)
    start = time.perf_counter()
    for _ in islice(stream, batches):
        pass
    return batches * cfg.train.batch_size / (time.perf_counter() - start)


def clip_parts(shards: str, clips: int) -> dict[str, float]:
    """Median milliseconds per clip of decoding and of the worker's augmentation (geometry, draws)."""
    raw = [s for url in expand_shards(shards) for s in read_shard(url, lambda *_: None)][:clips]
    rng = np.random.default_rng(0)
    params = AugmentParams(jitter=0.8, grey=0.1, blur=0.1)
    decode_ms, augment_ms = [], []
    for sample in raw:
        start = time.perf_counter()
        clip = decode_sample(sample)
        middle = time.perf_counter()
        augment_clip(clip.frames, clip.labels, 224, params, rng)  # the colour is drawn, applied on device
        decode_ms.append((middle - start) * 1e3)
        augment_ms.append((time.perf_counter() - middle) * 1e3)
    return {"decode_ms": statistics.median(decode_ms), "augment_ms": statistics.median(augment_ms)}


def data_wait(shards: str, work: Path, steps: int) -> dict[str, float]:
    """Train trajvit2 small for `steps` steps (1 process, 2 workers); data wait after the first interval."""
    import mlflow

    run_dir, db = work / "train-run", work / "mlflow.db"
    overrides = [
        f"data.shards={shards}",
        f"run_dir={run_dir}",
        f"tracking.uri=sqlite:///{db}",
        "tracking.system_metrics=false",
        "model.size=small",
        "clip.frames=16",
        "clip.size=224",
        "data.num_workers=2",
        "data.shuffle_buffer=16",
        f"train.batch_size={TRAIN_BATCH}",
        f"train.steps={steps}",
        "train.log_every=2",
        f"train.checkpoint_every={steps}",
        "train.precision=fp32",
        "launch.backend=local",
        "launch.nproc=1",
    ]
    subprocess.run(
        [*TRAJTOK, "train", str(REPO_ROOT / "configs" / "train" / "trajvit2.yaml"), *overrides],
        check=True,
        cwd=work,
        capture_output=True,
    )
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    def steady(key: str) -> float:
        return statistics.mean(m.value for m in client.get_metric_history(run_id, key) if m.step > 2)

    return {"data_wait_frac": steady("train/data_wait_frac"), "samples_per_s": steady("train/samples_per_s")}


def colour_ms(batch: int, frames: int, size: int, params: AugmentParams | None, batches: int = 20) -> float:
    """Mean milliseconds of `apply_colour` on a training batch: every change on every clip (`params` None),
    or each clip's changes drawn with `params` (the run's probabilities), over `batches` batches."""
    rng = np.random.default_rng(0)
    clips = torch.from_numpy(rng.integers(0, 256, (batch, frames, 3, size, size), dtype=np.uint8))
    all_on = np.array([1.0, 1.2, 0.8, 1.1, 1.0, 1.5], dtype=np.float32)
    times = []
    for _ in range(batches):
        rows = np.stack([all_on if params is None else colour_draws(params, rng) for _ in range(batch)])
        start = time.perf_counter()
        apply_colour(clips, torch.from_numpy(rows))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.mean(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=32, help="clips to shard")
    parser.add_argument("--batches", type=int, default=12, help="batches of 4 clips to time per setting")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = make_shards(work, args.clips)
        result = {
            "run": run_record([sys.executable, *sys.argv], torch.device("cpu")),
            "per_clip": clip_parts(shards, args.clips),
            "clips_per_s": {
                "in_process_reader": clips_per_second(loader_config(shards, 0), args.batches),
                "1_worker": clips_per_second(loader_config(shards, 1), args.batches),
                "2_workers": clips_per_second(loader_config(shards, 2), args.batches),
            },
            "train_trajvit2_small": data_wait(shards, work, args.train_steps),
        }
        train = result["train_trajvit2_small"]
        step_ms = 1e3 * TRAIN_BATCH / train["samples_per_s"]
        drawn = AugmentParams.from_config(loader_config(shards, 0).data)
        train["colour_ms_per_batch_drawn"] = colour_ms(TRAIN_BATCH, 16, 224, drawn)
        train["colour_ms_per_batch_all_on"] = colour_ms(TRAIN_BATCH, 16, 224, None, batches=5)
        train["colour_share_of_step"] = train["colour_ms_per_batch_drawn"] / step_ms
        train["colour_share_of_step_all_on"] = train["colour_ms_per_batch_all_on"] / step_ms
    print(json.dumps(result, indent=2))
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
