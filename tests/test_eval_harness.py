"""The evaluation harness end to end: eval sets from manifests and shards, features split across ranks, the
four tasks through `trajtok eval`, results in JSON and in MLflow under the training run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from exported_runs import write_weights

from launch.cli import main as cli
from launch.commands._common import expand_aliases
from launch.commands.eval import ALIASES
from trajtok.config import ClipConfig, load_config
from trajtok.data.augment import center_clip
from trajtok.data.sample import decode_sample
from trajtok.data.synth_scene import COLOURS as SYNTH_COLOURS
from trajtok.distributed import free_port, init_process_group
from trajtok.errors import ConfigError
from trajtok.eval.evalset import EvalClips, read_items
from trajtok.eval.features import rank_batches
from trajtok.eval.run import Evaluation, caption_list, evaluate, evaluate_and_record, mlflow_metrics
from trajtok.models.text import build_tokenizer
from trajtok.models.trajectory_encoder import MAX_TOKENS_PER_TRAJECTORY
from trajtok.rundir import RUN_ID_FILE
from trajtok.tracking import start_tracker

torch.set_num_threads(1)
CLIP = ["clip.frames=8", "clip.size=32", "clip.sampling=middle"]
COLOURS = list(SYNTH_COLOURS)


def labelled_manifest(synth: Path, out: Path, attribute: str, rows: slice = slice(None)) -> Path:
    """The synthetic manifest with a `label` column: the first object's `attribute` (shape, colour, ...)."""
    scenes = [json.loads(line) for line in (synth / "scenes.jsonl").read_text().splitlines()]
    lines = []
    for line, scene in list(zip((synth / "manifest.jsonl").read_text().splitlines(), scenes))[rows]:
        row = json.loads(line)
        row["video"], row["gt_labels"] = str(synth / row["video"]), str(synth / row["gt_labels"])
        lines.append(json.dumps({**row, "label": scene["objects"][0][attribute]}) + "\n")
    out.write_text("".join(lines))
    return out


def settings(tmp_path: Path, manifest: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={tmp_path / 'eval-run'}",
        f"data.manifest={manifest}",
        f"eval.ckpt={ckpt}",
        "data.num_workers=0",
        "eval.batch_size=5",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.system_metrics=false",
        *CLIP,
        *extra,
    ]


# --- eval sets ------------------------------------------------------------------------------------------


def test_shard_clips_are_the_samples_center_cropped(synthetic_shards):
    items = read_items(synthetic_shards.pattern)
    assert len(items) == synthetic_shards.num_shards * synthetic_shards.clips_per_shard
    clips = EvalClips(items, ClipConfig(frames=8, size=32), with_labels=True)
    first_url = synthetic_shards.pattern.replace("{000000..000007}", "000000")
    raw = next(iter(wds.WebDataset(first_url, shardshuffle=False)))
    sample = decode_sample(raw)
    expected_frames, expected_labels = center_clip(sample.frames, sample.labels, 32)
    got = clips[0]
    assert items[0].key == raw["__key__"] and items[0].captions == json.loads(raw["json"])["captions"]
    assert torch.equal(got["frames"], torch.from_numpy(expected_frames).permute(0, 3, 1, 2))
    assert torch.equal(got["labels"], torch.from_numpy(expected_labels.astype(np.int64)))


def test_manifest_clips_sample_the_middle_and_keep_labels_aligned(synth_dataset):
    items = read_items(str(synth_dataset / "manifest.jsonl"))
    clips = EvalClips(items, ClipConfig(frames=4, size=64, sampling="middle"), with_labels=True)
    sample = clips[3]
    assert sample["frames"].shape == (4, 3, 64, 64) and sample["labels"].shape == (4, 16, 16)
    # 4 of 8 frames, bin centres: frames 1, 3, 5, 7 (each label map is the ground truth of its frame)
    full = EvalClips(items, ClipConfig(frames=8, size=64), with_labels=True)[3]
    assert torch.equal(sample["labels"], full["labels"][1::2])
    assert torch.equal(sample["frames"], full["frames"][1::2])


@pytest.mark.parametrize(("items", "batch", "world"), [(7, 3, 2), (1, 4, 3), (12, 5, 2), (9, 2, 4)])
def test_rank_batches_cover_every_item_once_in_equal_steps(items: int, batch: int, world: int):
    per_rank = [rank_batches(items, batch, rank, world) for rank in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes part in every collective
    real = sorted(
        i for batches in per_rank for batch_range, padding in batches if not padding for i in batch_range
    )
    assert real == list(range(items))


# --- split across ranks -------------------------------------------------------------------------------


def _features_and_record(overrides: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    cfg = load_config(None, overrides)
    job = Evaluation(cfg, torch.device("cpu"))
    items = read_items(cfg.data.manifest)
    arrays = {
        "videos": job.video_embeddings(items),
        "texts": job.text_embeddings(caption_list(items, join=False)[0]),
    }
    return arrays, evaluate(cfg)


def _rank(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    init_process_group("gloo")
    arrays, record = _features_and_record(overrides)
    np.savez(Path(out) / f"rank{rank}.npz", **arrays)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record["metrics"]))
    dist.barrier()  # as trajtok eval does: a rank tearing gloo down while its peer still talks can abort it
    dist.destroy_process_group()


def test_two_ranks_give_exactly_the_one_process_features_and_metrics(tmp_path, synth_dataset):
    manifest = tmp_path / "odd.jsonl"  # 7 clips in batches of 3: one rank pads with a repeated batch
    lines = (synth_dataset / "manifest.jsonl").read_text().splitlines()[:7]
    manifest.write_text(
        "".join(line.replace('": "videos/', f'": "{synth_dataset}/videos/') + "\n" for line in lines)
    )
    overrides = [*settings(tmp_path, manifest, write_weights(tmp_path / "train")), "eval.batch_size=3"]
    overrides.append("eval.dual_softmax=true")
    mp.spawn(_rank, args=(2, free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    reference, record = _features_and_record(overrides)
    assert reference["videos"].shape == (7, 32) and reference["texts"].shape == (7, 32)
    for rank in range(2):
        gathered = np.load(tmp_path / f"rank{rank}.npz")
        for name, expected in reference.items():
            assert np.array_equal(gathered[name], expected), (rank, name)
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == record["metrics"]


# --- tasks through the command line ---------------------------------------------------------------------


def _training_run(tmp_path: Path) -> tuple[Path, str]:
    """A training run directory as `trajtok train` leaves it: exported weights and its MLflow run id."""
    run_dir = write_weights(tmp_path / "train", step=40)
    cfg = load_config(
        None,
        [
            f"run_dir={run_dir}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.system_metrics=false",
        ],
    )
    with start_tracker(cfg, rank=0) as tracker:
        run_id = tracker.run_id
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    return run_dir, run_id


def test_retrieval_writes_json_and_a_run_nested_under_training(tmp_path, synth_dataset, repo_root, capsys):
    run_dir, parent_id = _training_run(tmp_path)
    manifest = labelled_manifest(synth_dataset, tmp_path / "set.jsonl", "shape", slice(0, 12))
    args = settings(tmp_path, manifest, run_dir, "eval.dual_softmax=true")
    assert cli(["eval", str(repo_root / "configs/eval/synthetic.yaml"), *args]) == 0
    assert "t2v_R@1" in capsys.readouterr().out
    record = json.loads((tmp_path / "eval-run" / "eval_retrieval.json").read_text())
    metrics = record["metrics"]
    assert record["details"] == {"videos": 12, "captions": 12, "chance_R@1": pytest.approx(100 / 12)}
    assert record["protocol"]["clip"]["sampling"] == "middle" and record["protocol"]["dual_softmax"]
    for prefix in ("t2v", "v2t", "dsl_t2v", "dsl_v2t"):
        assert 0 <= metrics[f"{prefix}_R@1"] <= metrics[f"{prefix}_R@5"] <= metrics[f"{prefix}_R@10"] <= 100
        assert 1 <= metrics[f"{prefix}_MedR"] <= 12
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == 1
    child = children[0]
    assert child.data.metrics == pytest.approx(mlflow_metrics(record))
    assert child.data.params["eval.task"] == "retrieval" and child.data.params["clip.frames"] == "8"
    history = client.get_metric_history(child.info.run_id, "eval/retrieval/t2v_R1")
    assert [m.step for m in history] == [40]  # logged at the checkpoint's training step
    assert "eval_retrieval.json" in [a.path for a in client.list_artifacts(child.info.run_id)]
    # the chart view compares training runs by their eval/ metrics: logged onto the training run too
    parent = client.get_run(parent_id)
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("eval/")} == child.data.metrics
    assert [m.step for m in client.get_metric_history(parent_id, "eval/retrieval/t2v_R1")] == [40]
    (dataset,) = child.inputs.dataset_inputs
    assert (
        dataset.dataset.name == "eval-set"
        and {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "evaluation"
    )
    assert child.data.tags["mlflow.user"] and child.data.tags["mlflow.source.name"]
    took = (child.info.end_time - child.info.start_time) / 1000
    assert took >= 0.8 * record["seconds"]  # the run lasts as long as the evaluation, not the logging


def test_classification_with_captions_as_classes_matches_video_to_text_retrieval(tmp_path, synth_dataset):
    """Zero-shot classification whose classes are the clips' own captions (template "{}") is video-to-text
    retrieval with one caption per video: two code paths, one answer."""
    ckpt = write_weights(tmp_path / "train")
    manifest = tmp_path / "captions.jsonl"
    rows = [json.loads(line) for line in (synth_dataset / "manifest.jsonl").read_text().splitlines()[:10]]
    manifest.write_text(
        "".join(
            json.dumps({**r, "video": str(synth_dataset / r["video"]), "label": r["caption"]}) + "\n"
            for r in rows
        )
    )
    base = settings(tmp_path, manifest, ckpt, "tracking.enabled=false")
    classify = evaluate(load_config(None, [*base, "eval.task=classify", 'eval.templates=["{}"]']))
    retrieval = evaluate(load_config(None, [*base, "eval.task=retrieval"]))
    assert classify["details"]["classes"] == sorted(r["caption"] for r in rows)
    assert classify["metrics"]["top1"] == pytest.approx(retrieval["metrics"]["v2t_R@1"])


def test_classification_averages_templates_per_class(tmp_path, synth_dataset):
    ckpt = write_weights(tmp_path / "train")
    manifest = labelled_manifest(synth_dataset, tmp_path / "colours.jsonl", "colour", slice(0, 12))
    templates = ["a {} thing", "something {} moves"]
    overrides = settings(tmp_path, manifest, ckpt, "tracking.enabled=false", "eval.task=classify")
    overrides += [f"eval.templates={json.dumps(templates)}", f"eval.classes={json.dumps(COLOURS)}"]
    record = evaluate(load_config(None, overrides))

    # the same numbers by hand: class embedding = normalised mean of normalised template embeddings
    job = Evaluation(load_config(None, overrides), torch.device("cpu"))
    tokenizer = build_tokenizer("bytes")
    with torch.no_grad():
        ids, mask = tokenizer.encode_batch([t.format(c) for c in COLOURS for t in templates], 64)
        prompts = job.model.encode_text(ids, mask).double().view(len(COLOURS), len(templates), -1)
        prompts = torch.nn.functional.normalize(prompts, dim=-1)
        class_embeds = torch.nn.functional.normalize(prompts.mean(dim=1), dim=-1).numpy()
    videos = job.video_embeddings(read_items(str(manifest)))
    scores = videos / np.linalg.norm(videos, axis=1, keepdims=True) @ class_embeds.T
    labels = [COLOURS.index(item.label) for item in read_items(str(manifest))]
    ranks = np.array([(row >= row[y]).sum() for row, y in zip(scores, labels)])
    assert record["metrics"]["top1"] == pytest.approx(100 * np.mean(ranks == 1))
    assert record["metrics"]["top5"] == pytest.approx(100 * np.mean(ranks <= 5))
    assert record["details"]["classes"] == COLOURS and record["protocol"]["templates"] == templates


def test_segment_scores_the_segmenter_against_ground_truth(tmp_path, synth_dataset):
    ckpt = write_weights(tmp_path / "train")
    manifest = labelled_manifest(synth_dataset, tmp_path / "set.jsonl", "shape", slice(0, 6))
    overrides = settings(
        tmp_path, manifest, ckpt, "tracking.enabled=false", "eval.task=segment", "clip.size=64"
    )
    record = evaluate(load_config(None, overrides))
    metrics, per_clip = record["metrics"], record["details"]["trajectories_per_clip"]
    assert sorted(per_clip) == sorted(item.key for item in read_items(str(manifest)))
    assert all(1 <= n <= 16 for n in per_clip.values())  # tiny: K = 16 queries
    assert metrics["num_trajectories"] == pytest.approx(np.mean(list(per_clip.values())))
    scenes = [json.loads(line) for line in (synth_dataset / "scenes.jsonl").read_text().splitlines()[:6]]
    assert metrics["num_objects"] == pytest.approx(np.mean([len(s["objects"]) for s in scenes]))
    assert 0 <= metrics["purity"] <= 1 and 0 <= metrics["veq"] <= 1 and 0 <= metrics["stq"] <= 1
    assert record["picture"].shape[0] >= 4 * 3 * 192  # 4 clips x (frame, label map, prediction) rows
    # tracked, the picture goes to the eval run as an image and not into the JSON
    logged, path = evaluate_and_record(load_config(None, [*overrides, "tracking.enabled=true"]))
    assert "picture" not in json.loads(path.read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert any(a.path.endswith(".png") for a in client.list_artifacts(logged["mlflow_run_id"], "images"))
    # the learned segmenter of a vit3d: there is none
    with pytest.raises(ConfigError, match="makes no trajectories"):
        evaluate(load_config(None, [*overrides, f"eval.ckpt={write_weights(tmp_path / 'vit', 'vit3d')}"]))


def test_probe_from_a_checkpoint_through_the_cli(tmp_path, synth_dataset, capsys):
    ckpt = write_weights(tmp_path / "train")
    train = labelled_manifest(synth_dataset, tmp_path / "train.jsonl", "colour", slice(0, 16))
    test = labelled_manifest(synth_dataset, tmp_path / "test.jsonl", "colour", slice(16, 24))
    args = settings(tmp_path, test, ckpt, "task=probe", f"eval.probe.train={train}", "eval.probe.steps=15")
    args += ["eval.probe.batch_size=8", "tokens_per_trajectory=2", f"classes={json.dumps(COLOURS)}"]
    assert cli(["eval", *args]) == 0
    record = json.loads((tmp_path / "eval-run" / "eval_probe.json").read_text())
    assert record["details"]["feature_shape"] == [8, 8, 8, 32]  # tiny backbone: T x H/4 x W/4 x D
    names = ["linear", "attentive", "trajadapter_n1", "trajadapter_n2", "trajadapter_n4"]
    assert [h["head"] for h in record["details"]["heads"]] == names
    assert record["details"]["segmenter"] == str(ckpt)  # the probed trajvit2 segments its own frames
    assert all(0 <= record["metrics"][f"{h}_top1"] <= 100 for h in names)
    # a vit3d makes no trajectories: TrajAdapter then needs eval.probe.segmenter, said in one line
    vit = write_weights(tmp_path / "vit", "vit3d")
    args = settings(tmp_path, test, vit, "task=probe", f"eval.probe.train={train}", "eval.probe.steps=2")
    args.append(f"classes={json.dumps(COLOURS)}")
    assert cli(["eval", *args]) == 2
    assert "eval.probe.segmenter" in capsys.readouterr().err
    assert cli(["eval", *args, f"eval.probe.segmenter={ckpt}", "eval.probe.tokens_per_trajectory=[4]"]) == 0


def test_user_errors_are_one_line_config_errors(tmp_path, synth_dataset, capsys):
    ckpt = write_weights(tmp_path / "train")
    manifest = labelled_manifest(synth_dataset, tmp_path / "set.jsonl", "shape", slice(0, 4))
    base = settings(tmp_path, manifest, ckpt, "tracking.enabled=false")
    assert cli(["eval", *base, "task=rank"]) == 2
    assert "eval.task 'rank'" in capsys.readouterr().err
    assert cli(["eval", *base, f"ckpt={tmp_path / 'missing'}"]) == 2
    assert "eval.ckpt" in capsys.readouterr().err
    assert cli(["eval", *base, "data.eval_shards=x-{0..1}.tar"]) == 2
    assert "both set" in capsys.readouterr().err
    unlabelled = tmp_path / "plain.jsonl"
    unlabelled.write_text(manifest.read_text().replace('"label"', '"shape"'))
    assert cli(["eval", *base, f"data.manifest={unlabelled}", "task=classify"]) == 2
    assert "no 'label'" in capsys.readouterr().err
    assert cli(["eval", *base, f"eval.tokens_per_trajectory={MAX_TOKENS_PER_TRAJECTORY + 1}"]) == 2


def test_bare_eval_keys_are_shorthand():
    items = ["task=probe", "ckpt=runs/a", "seed=3", "train.lr=1"]
    assert expand_aliases(items, ALIASES) == [
        "eval.task=probe",
        "eval.ckpt=runs/a",
        "seed=3",  # a top-level key stays one
        "train.lr=1",
    ]


def test_a_training_run_missing_from_the_store_gets_a_run_of_its_own(tmp_path, synth_dataset):
    ckpt = write_weights(tmp_path / "train")
    (ckpt / RUN_ID_FILE).write_text("0123456789abcdef0123456789abcdef\n")  # from another MLflow store
    manifest = labelled_manifest(synth_dataset, tmp_path / "set.jsonl", "shape", slice(0, 4))
    assert cli(["eval", *settings(tmp_path, manifest, ckpt)]) == 0
    eval_run = (tmp_path / "eval-run" / RUN_ID_FILE).read_text().strip()
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(eval_run)
    assert "mlflow.parentRunId" not in run.data.tags and "eval/retrieval/v2t_R1" in run.data.metrics
