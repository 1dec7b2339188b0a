"""The dry run: what a training job would build, printed without training (`train.dry_run`,
`submit train ... launch.dry_run=true`), and the memory accounting it uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.cli import main
from trajtok.train.plan import bytes_per_parameter

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train"

# bench/bench_zero.py at 2 ranks (BENCHMARKS.md, "ZeRO memory per rank"): bytes per parameter per rank
MEASURED_AT_2_RANKS = {
    ("fp32", 0): 16.0, ("fp32", 1): 12.0, ("fp32", 2): 12.0, ("fp32", 3): 11.0,
    ("bf16", 0): 16.0, ("bf16", 1): 9.0, ("bf16", 2): 9.0, ("bf16", 3): 8.5,
}  # fmt: skip


@pytest.mark.parametrize(("precision", "stage"), list(MEASURED_AT_2_RANKS))
def test_the_memory_accounting_gives_what_was_measured(precision: str, stage: int):
    assert bytes_per_parameter(stage, precision, 2) == MEASURED_AT_2_RANKS[precision, stage]
    if stage:  # more ranks share the sharded states: less per rank, never below the unsharded part
        assert bytes_per_parameter(stage, precision, 64) < bytes_per_parameter(stage, precision, 2)


def test_train_dry_run_prints_the_plan_and_trains_nothing(synthetic_shards, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    args = [
        "train", str(CONFIG / "tiny-cpu.yaml"), f"data.shards={synthetic_shards.pattern}",
        f"run_dir={run_dir}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "launch.nproc=2",
        "data.num_workers=2", "train.dry_run=true",
    ]  # fmt: skip
    assert main(args) == 0
    text = " ".join(capsys.readouterr().out.split())  # the table's alignment aside
    assert "trajvit2 (size tiny), clip 8x64x64" in text
    assert "ranks 2 (global batch 16)" in text and "12.0 B/parameter" in text  # ZeRO-1, fp32, 2 ranks
    assert "200 (16 per virtual epoch)" in text  # 256 samples a virtual epoch / (2 ranks x batch 8)
    assert text.count("video-0000") == 4  # two ranks x two workers, each its first shard
    assert f"{run_dir}/checkpoints every 50 steps" in text and "a new run" in text
    assert not run_dir.exists() and not (tmp_path / "mlflow.db").exists()


def test_submit_dry_run_adds_the_plan_for_the_ranks_it_asks_for(synthetic_shards, tmp_path: Path, capsys):
    args = [
        "submit", "train", str(CONFIG / "tiny-cpu.yaml"), f"data.shards={synthetic_shards.pattern}",
        f"run_dir={tmp_path}", "launch.backend=slurm", "launch.nodes=2", "launch.gpus_per_node=4",
        "tracking.enabled=false", "launch.dry_run=true",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in out and "# what each rank builds" in out
    assert "8 (global batch 64)" in out and "MLflow" in out
    assert not list(tmp_path.iterdir())
