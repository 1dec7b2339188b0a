"""ZeRO memory per rank: parameters + gradients + optimizer state for stages 0-3, measured against theory.

Two gloo processes on this machine build the engine exactly as training does (`trajtok.train.engine`),
take two optimizer steps on an MLP of P parameters, then count every live tensor storage of the process
(the garbage collector's view: parameters, gradients, AdamW moments, DeepSpeed's flat buffers and master
copies), minus what was live before the model existed. The expected bytes per parameter come from the
ZeRO paper's accounting for this setup (AdamW: two fp32 moments; fp32 training keeps no separate
master copy in theory):

    fp32: stage 0: 4 + 4 + 8 = 16 | stage 1: 4 + 4 + 8/N | stage 2: 4 + (4 + 8)/N | stage 3: 16/N
    bf16: stage 0: 2 + 2 + 12 = 16 | stage 1: 2 + 2 + 12/N | stage 2: 2 + (2 + 12)/N | stage 3: 16/N
          (12 = fp32 master weights + two moments)

The model is a stack of linear layers, not TrajViT2: the ratios depend only on the parameter count, and
ZeRO-3 cannot yet train our models (see tests/test_train_deepspeed.py::test_zero3_trains).

    .venv/bin/python bench/bench_zero.py --precision fp32 bf16 --json bench-zero.json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_record, write_json  # noqa: E402

from trajtok.config import TrainConfig  # noqa: E402
from trajtok.distributed import free_port  # noqa: E402

WORLD = 2
STAGES = (0, 1, 2, 3)


def expected_bytes_per_param(stage: int, precision: str, world: int) -> float:
    """The ZeRO paper's per-rank bytes per parameter (see the module docstring)."""
    weight = 4 if precision == "fp32" else 2
    grad = weight
    optimizer = 8 if precision == "fp32" else 12
    if stage == 0:
        return weight + grad + optimizer
    if stage == 1:
        return weight + grad + optimizer / world
    if stage == 2:
        return weight + (grad + optimizer) / world
    return (weight + grad + optimizer) / world


def live_tensor_bytes() -> int:
    """Bytes of every distinct CPU tensor storage the garbage collector can reach."""
    gc.collect()
    warnings.simplefilter("ignore")  # some objects the collector holds warn when inspected
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
            continue
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() == 0:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def _rank(rank: int, port: int, stage: int, precision: str, width: int, depth: int, queue) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import deepspeed

    from trajtok.train.engine import build_engine, compute_dtype

    deepspeed.init_distributed(dist_backend="gloo")
    train = TrainConfig(zero_stage=stage, precision=precision, batch_size=4, lr=1e-3)
    baseline = live_tensor_bytes()
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
    params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, train, WORLD)
    dtype = compute_dtype(train)
    used = 0
    for step in range(2):  # the second backward finds the optimizer state of the first step in place
        loss = engine(torch.randn(4, width, dtype=dtype)).float().pow(2).mean()
        engine.backward(loss)
        del loss
        if step == 1:  # gradients exist between backward and step: the peak of the three
            used = live_tensor_bytes() - baseline
        engine.step()
    queue.put({"rank": rank, "params": params, "bytes": used})
    torch.distributed.barrier()


def measure(stage: int, precision: str, width: int, depth: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, port, stage, precision, width, depth, queue)) for r in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    results = sorted((queue.get(timeout=600) for _ in procs), key=lambda r: r["rank"])
    for proc in procs:
        proc.join()
    params = results[0]["params"]
    per_rank = [r["bytes"] / params for r in results]
    return {
        "stage": stage,
        "precision": precision,
        "params": params,
        "measured_bytes_per_param": per_rank,
        "expected_bytes_per_param": expected_bytes_per_param(stage, precision, WORLD),
        "measured_mib_per_rank": [r["bytes"] / 2**20 for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--stages", nargs="+", type=int, default=list(STAGES), choices=STAGES)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rows = [measure(s, p, args.width, args.depth) for p in args.precision for s in args.stages]
    stage0 = {r["precision"]: r["measured_bytes_per_param"][0] for r in rows if r["stage"] == 0}
    header = ("precision", "stage", "bytes/param rank 0", "rank 1", "expected", "vs stage 0", "expected")
    print("{:9} {:>5} {:>18} {:>7} {:>9} {:>10} {:>9}".format(*header))
    for r in rows:
        measured = r["measured_bytes_per_param"]
        expected0 = expected_bytes_per_param(0, r["precision"], WORLD)
        print(
            f"{r['precision']:9} {r['stage']:5d} {measured[0]:18.2f} {measured[1]:7.2f} "
            f"{r['expected_bytes_per_param']:9.2f} {measured[0] / stage0[r['precision']]:10.2f} "
            f"{r['expected_bytes_per_param'] / expected0:9.2f}"
        )
    result = {
        "run": run_record([sys.executable, *sys.argv], torch.device("cpu")),
        "world_size": WORLD,
        "rows": rows,
    }
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
