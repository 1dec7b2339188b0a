"""The main job at reduced size, through the real command: every stage runs, both models beat chance;
and the same job on a user's own manifests.

TRAJTOK_DEMO_SEED=N runs the reduced demo with training seed N (default 0), to measure the margins of its
assertions over seeds; the quality bar itself is the benchmark's (BENCHMARKS.md, Main job)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import webdataset as wds
from mlflow_server import mlflow_server

HELDOUT = 32
TRAJTOK = str(Path(sys.executable).with_name("trajtok"))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path):
    out = tmp_path / "demo"
    seed = int(os.environ.get("TRAJTOK_DEMO_SEED", "0"))
    command = [
        TRAJTOK,
        "demo",
        f"demo.out={out}",
        f"seed={seed}",
        "demo.train_videos=64",
        f"demo.heldout_videos={HELDOUT}",
        "demo.segmenter_steps=40",  # trajvit2: 40 segmenter steps, then 80 warm-started; vit3d: 120
        "train.steps=80",
        "train.checkpoint_every=120",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    table = proc.stdout[proc.stdout.index("results on the held-out clips") :]
    assert all(name in table for name in ("segmenter", "trajvit2", "vit3d", "mlflow ui --backend-store-uri"))
    assert "model.init" in proc.stdout + proc.stderr  # stage 2 started from stage 1's weights

    results = json.loads((out / "results.json").read_text())
    chance_mean_rank = (HELDOUT + 1) / 2
    steps = {m["name"]: m["steps"] for m in results["models"]}
    assert steps == {"segmenter": 40, "trajvit2": 120, "vit3d": 120}
    for model in results["models"]:
        assert model["train"]["train/tokens_per_clip/mean"] > 0 and model["train_seconds"] > 0
        if model["name"] == "segmenter":
            continue
        r = model["retrieval"]
        mean_rank = (r["t2v_MeanR"] + r["v2t_MeanR"]) / 2
        # A random ranking has mean rank 16.5 +- 1.6 here; 0.7 x chance (11.6) is 3 of its spreads below, and
        # the trained models reached 9.5 (trajvit2) and 8.6 (vit3d). R@5 over 32 clips moves in steps of 3
        # points and sat at exactly 2 x chance for trajvit2 on one run: that quality bar is the benchmark's.
        print(f"seed {seed}: {model['name']} mean rank {mean_rank:.2f}, bar {0.7 * chance_mean_rank:.2f}")
        assert mean_rank < 0.7 * chance_mean_rank, (model["name"], r)
    trajvit2 = next(m for m in results["models"] if m["name"] == "trajvit2")
    assert 0 < trajvit2["segmentation"]["mean_best_overlap"] <= 1
    assert sorted(p.name for p in (out / "pictures").glob("*.png")) == ["tree.png", "vtest.png"]
    assert (out / "mlflow.db").is_file()
    _check_the_chart_view_compares_the_models(out, results)


@pytest.mark.slow
def test_demo_on_the_users_own_manifests(tmp_path: Path):
    """`demo.train_manifest` / `demo.heldout_manifest` replace the synthetic sets: a CSV training set and a
    TrajViT JSON held-out set without ground truth, whose segmentation columns then say n/a."""
    sets = {}
    for role, seed, videos in (("train", 0, 8), ("heldout", 1000, 4)):
        folder = tmp_path / f"synth-{role}"
        small = ["synth.frames=8", "synth.height=64", "synth.width=64", f"synth.seed={seed}"]
        subprocess.run(
            [TRAJTOK, "synth", f"synth.out={folder}", f"synth.videos={videos}", *small], check=True
        )
        sets[role] = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        for row in sets[role]:
            row["video"] = str(folder / row["video"])
    train, heldout = tmp_path / "mine" / "train.csv", tmp_path / "mine" / "heldout.json"
    train.parent.mkdir()
    with train.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["video", "caption"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sets["train"])
    heldout.write_text(json.dumps([{"video": r["video"], "caption": r["caption"]} for r in sets["heldout"]]))

    out = tmp_path / "demo"
    tiny = (
        "demo.models=[trajvit2] demo.segmenter_steps=0 train.steps=2 train.batch_size=4 "
        "data.samples_per_epoch=8 eval.batch_size=4 launch.nproc=1 train.eval_every=0 "
        f"demo.real_videos={tmp_path / 'none'}"
    )
    command = [TRAJTOK, "demo", f"demo.out={out}", f"demo.train_manifest={train}",
               f"demo.heldout_manifest={heldout}", *tiny.split()]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (
        f"training set: 8 clips in {train}" in proc.stdout
        and f"held-out set: 4 clips in {heldout}" in proc.stdout
    )
    assert not (out / "synth-train").exists(), "no synthetic set is made when the user names theirs"
    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["trajvit2"]
    assert results["models"][0]["segmentation"] == {}
    assert results["chance_R@1"] == pytest.approx(25.0)
    trajvit2_row = next(line for line in proc.stdout.splitlines() if line.startswith("trajvit2 "))
    assert trajvit2_row.split()[-2:] == ["n/a", "n/a"]


TINY_DEMO = (
    "demo.train_videos=8 demo.heldout_videos=4 demo.segmenter_steps=2 train.steps=2 train.batch_size=4 "
    "data.samples_per_epoch=8 eval.batch_size=4 launch.nproc=1"
)


def run_tiny_demo(config: Path, out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """`trajtok demo CONFIG` with every stage at a few steps; the test fails with the output's tail."""
    command = [TRAJTOK, "demo", str(config), f"demo.out={out}", *TINY_DEMO.split(), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_self_labelling_rounds_at_tiny_size(tmp_path: Path, repo_root: Path):
    """configs/demo-selflabel.yaml, every stage at a few steps: round 1's trajvit2 labels round 2's shards
    (each sample names it), round 2 and its control start from round 1, both rounds' labels are scored."""
    out = tmp_path / "selflabel"
    config = repo_root / "configs" / "demo-selflabel.yaml"
    proc = run_tiny_demo(config, out, tmp_path, "train.eval_every=0", f"demo.real_videos={tmp_path / 'none'}")

    results = json.loads((out / "results.json").read_text())
    steps = {m["name"]: m["steps"] for m in results["models"]}
    assert steps == {"segmenter": 2, "trajvit2": 4, "trajvit2-r2": 6, "trajvit2-r2-control": 6}
    rounds = results["label_rounds"]
    assert [(r["round"], r["labeller"]) for r in rounds] == [
        (1, "classical"),
        (2, "trajtok (round 1 trajvit2)"),
    ]
    for r in rounds:
        assert 0 <= r["quality"]["purity"] <= 1 and r["quality"]["num_trajectories"] >= 1
    weights = out / "runs" / "trajvit2" / "weights.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    for sample in wds.WebDataset(str(out / "shards-round2" / "shard-000000.tar"), shardshuffle=False):
        labeler = json.loads(sample["json"])["labeler"]
        assert labeler["name"] == "trajtok" and labeler["source"]["sha256"] == digest
    logs = proc.stdout + proc.stderr
    assert logs.count(f"model.init {weights}") == 2  # round 2 and its control both start from round 1
    table = proc.stdout[proc.stdout.index("self-labelling:") :]
    assert "trajtok (round 1 trajvit2)" in table and "control R@5" in table


@pytest.mark.slow
def test_vlm_line_at_tiny_size(tmp_path: Path, repo_root: Path):
    """configs/demo-vlm.yaml, every stage at a few steps: the segmenter and vit3d it trains are the runs
    both VLMs read; both are scored per question type; the token table covers 32, 64 and 128 frames."""
    out = tmp_path / "vlm"
    vlm = "demo.vlm.train_videos=4 demo.vlm.heldout_videos=2 demo.vlm.frames=16 demo.vlm.steps=2 "
    vlm += "demo.vlm.batch_size=2"
    proc = run_tiny_demo(repo_root / "configs" / "demo-vlm.yaml", out, tmp_path, *vlm.split())

    results = json.loads((out / "results.json").read_text())
    models = {m["name"]: m for m in results["models"]}
    assert set(models) == {"trajvlm", "patchvlm"}
    for m in models.values():
        assert m["steps"] == 2 and 0 <= m["metrics"]["accuracy"] <= 100
        assert {"accuracy/count", "accuracy/order"} <= set(m["metrics"])
        assert sorted(int(f) for f in m["tokens"]) == [32, 64, 128]
    trained = (out / "runs" / "trajvlm" / "config.yaml").read_text()
    assert str(out / "runs" / "vit3d") in trained and str(out / "runs" / "segmenter") in trained
    patch, traj = models["patchvlm"]["tokens"], models["trajvlm"]["tokens"]
    assert patch["128"][1] == 2 * patch["64"][1] and traj["128"][1] == 2 * traj["64"][1]  # per window / frame
    assert "tokens@128" in proc.stdout


@pytest.mark.parametrize(
    ("named", "problem"),
    [("train", "name both, or neither"), ("both-uncaptioned", "mine.jsonl:1: missing 'caption' field")],
)
def test_demo_refuses_half_named_or_uncaptioned_manifests_in_one_line(tmp_path: Path, named, problem):
    manifest = tmp_path / "mine.jsonl"
    manifest.write_text(json.dumps({"video": "a.mp4"}) + "\n")
    overrides = [f"demo.train_manifest={manifest}"]
    if named.startswith("both"):
        overrides.append(f"demo.heldout_manifest={manifest}")
    proc = subprocess.run([TRAJTOK, "demo", f"demo.out={tmp_path / 'out'}", *overrides],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and problem in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _check_the_chart_view_compares_the_models(out: Path, results: dict) -> None:
    """What the experiment's chart view shows, read as the MLflow UI reads it (REST API of a real server):
    each top-level training run carries its evaluations' eval/ metrics and its held-out validation."""
    with mlflow_server(f"sqlite:///{out / 'mlflow.db'}", out / "mlruns") as uri:
        experiment = _rest(uri, "experiments/get-by-name?experiment_name=trajtok")["experiment"]
        search = {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
        runs = _rest(uri, "runs/search", search)
    top_level = {}
    for run in runs["runs"]:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        if "mlflow.parentRunId" not in tags:
            top_level[run["info"]["run_name"]] = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    for model in results["models"]:
        if model["name"] == "segmenter":
            continue
        metrics = top_level[model["name"]]
        assert metrics["eval/retrieval/t2v_R1"] == pytest.approx(model["retrieval"]["t2v_R@1"])
        assert 0 <= metrics["val/retrieval/t2v_R1"] <= 100


def _rest(uri: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=data)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())
