"""TrajVLM and PatchVLM: tiny language models on tiny trained runs, their loss, generation, training and QA
evaluation through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exported_runs import write_weights
from safetensors.torch import load_file

from launch.cli import main as cli
from trajtok.config import ClipConfig, ModelConfig, SynthConfig, VLMConfig
from trajtok.data.synth import write_dataset
from trajtok.errors import ConfigError
from trajtok.models.registry import build_model
from trajtok.models.vlm import IGNORE, QATokenizer, train_qa_tokenizer
from trajtok.train.engine import param_groups

torch.set_num_threads(1)
QUESTIONS = ["what colour is the shape that enters last?", "how many shapes appear in all?"]
ANSWERS = ["cyan", "three"]
CLIP = ClipConfig(frames=16, size=32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vlm")
    texts = [QATokenizer.prompt(q) for q in QUESTIONS] + [" " + a for a in ANSWERS]
    return {
        "vision": write_weights(root / "vit3d", "vit3d"),
        "segmenter": write_weights(root / "segmenter", "segmenter"),
        "tokenizer": train_qa_tokenizer(texts, root / "tokenizer.json", vocab_size=300),
    }


def vlm(runs: dict[str, Path], name: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = {
        "vision": str(runs["vision"]),
        "segmenter": str(runs["segmenter"]),
        "tokenizer": str(runs["tokenizer"]),
    }
    return build_model(ModelConfig(name=name, vlm=VLMConfig(**{**settings, **changes})), CLIP)


def test_only_the_answer_is_scored(runs):
    tokenizer = QATokenizer(runs["tokenizer"])
    ids, mask, labels = tokenizer.training_batch(QUESTIONS, ANSWERS, 48)
    for row, answer in enumerate(ANSWERS):
        scored = labels[row][labels[row] != IGNORE].tolist()
        assert tokenizer.answer(scored) == answer and scored[-1] == tokenizer.end_id
        prompt_length = int(mask[row].sum()) - len(scored)
        assert (labels[row, :prompt_length] == IGNORE).all() and (
            labels[row, mask[row].sum() :] == IGNORE
        ).all()
    model = vlm(runs, "trajvlm").eval()
    frames = torch.randn(2, 16, 3, 32, 32)
    out = model(frames, ids, mask, labels)
    video = out.logits.shape[1] - ids.shape[1]
    full = torch.cat([torch.full((2, video), IGNORE), labels], dim=1)
    expected = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), full[:, 1:].flatten(), ignore_index=IGNORE)
    assert torch.allclose(out.loss, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["trajvlm", "patchvlm"])
def test_forward_backward_reach_the_connector_and_the_language_model_only(runs, name):
    model = vlm(runs, name)
    for part in ("vision", "video_segmenter"):
        if part in model.parts():
            model.parts()[part].requires_grad_(False)  # what training's default stage does
    tokenizer = QATokenizer(runs["tokenizer"])
    ids, mask, labels = tokenizer.training_batch(QUESTIONS, ANSWERS, 48)
    out = model(torch.randn(2, 16, 3, 32, 32), ids, mask, labels)
    out.loss.backward()
    grads = {
        name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        for name, part in model.parts().items()
    }
    assert grads.pop("connector") and grads.pop("language") and not any(grads.values())


def test_token_budget_follows_windows_not_frames(runs):
    traj, patch = vlm(runs, "trajvlm").eval(), vlm(runs, "patchvlm").eval()
    per_window = traj.connector.segmenter.head.num_queries  # K x n = 1
    for frames in (8, 16, 32):
        clip = torch.randn(1, frames, 3, 32, 32)
        with torch.no_grad():
            traj_tokens, traj_mask = traj.video_tokens(clip)
            patch_tokens, _ = patch.video_tokens(clip)
        assert (
            traj_tokens.shape[1] == frames // 8 * per_window and 1 <= traj_mask.sum() <= traj_tokens.shape[1]
        )
        assert patch_tokens.shape[1] == frames // 2 * 1  # vit3d: T/2 x (32/16 = 2 -> one 3x3 cell)


def test_left_padded_prompts_answer_as_they_would_alone(runs):
    model = vlm(runs, "patchvlm").eval()
    tokenizer = QATokenizer(runs["tokenizer"])
    frames = torch.randn(2, 16, 3, 32, 32)
    ids, mask = tokenizer.prompts(QUESTIONS, 48)
    together, tokens = model.answer(frames, ids, mask, 3)
    for row, question in enumerate(QUESTIONS):
        alone_ids, alone_mask = tokenizer.prompts([question], 48)
        alone, _ = model.answer(frames[row : row + 1], alone_ids, alone_mask, 3)
        assert torch.equal(alone[0], together[row])
    assert tokens.tolist() == [8, 8]


def test_per_part_learning_rates_and_stages(runs):
    model = vlm(runs, "trajvlm")
    model.parts()["language"].requires_grad_(False)  # stage `connector`
    groups = param_groups(
        model, 0.05, {"connector": 1.0, "vision": 0.5, "language": 0.1, "video_segmenter": 0.5}
    )
    scales = {g["lr_scale"] for g in groups if g["params"]}
    language = {id(p) for p in model.parts()["language"].parameters()}
    assert not any(id(p) in language for g in groups for p in g["params"])
    assert scales == {1.0, 0.5}


def test_user_errors_are_one_line(runs, tmp_path):
    with pytest.raises(ConfigError, match="model.vlm.vision"):
        build_model(ModelConfig(name="trajvlm"), CLIP)
    with pytest.raises(ConfigError, match="model.vlm.segmenter"):
        vlm(runs, "trajvlm", segmenter="", vision=str(runs["vision"]))  # a vit3d makes no trajectories
    with pytest.raises(ConfigError, match="model.vlm.tokenizer"):
        vlm(runs, "patchvlm", tokenizer="")


def test_two_process_training_then_qa_evaluation_through_the_cli(runs, tmp_path, capsys):
    qa = write_dataset(
        SynthConfig(out=str(tmp_path / "qa"), videos=6, frames=16, height=32, width=32, questions=True)
    )
    run_dir = tmp_path / "run"
    common = [
        f"data.manifest={qa}",
        "clip.frames=16",
        "clip.size=32",
        f"tracking.uri=sqlite:///{tmp_path / 'ml.db'}",
    ]
    args = [
        "train",
        "configs/train/trajvlm-tiny.yaml",
        *common,
        f"model.vlm.vision={runs['vision']}",
        f"model.vlm.segmenter={runs['segmenter']}",
        f"run_dir={run_dir}",
        "train.steps=3",
        "train.batch_size=2",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "data.num_workers=0",
    ]
    assert cli(args) == 0
    assert (run_dir / "tokenizer.json").is_file() and (run_dir / "weights.safetensors").is_file()
    log = (run_dir / "train.log").read_text()
    assert "step 3/3" in log and "tokens/clip" in log
    # the same command with more steps resumes from the last checkpoint, not from the start
    assert cli([*args[:-5], "train.steps=4", *args[-4:]]) == 0
    log = (run_dir / "train.log").read_text()
    assert "at step 3" in log and "step 4/4" in log and "step 1/4" not in log
    assert (
        cli(
            [
                "eval",
                f"ckpt={run_dir}",
                "task=qa",
                *common,
                "clip.sampling=middle",
                f"run_dir={tmp_path / 'eval'}",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "eval" / "eval_qa.json").read_text())
    kinds = set(record["details"]["per_type"])
    assert kinds <= {"last_entry", "count", "order", "final_motion"} and len(kinds) >= 3
    assert {f"accuracy/{k}" for k in kinds} <= set(record["metrics"]) and 0 <= record["metrics"][
        "accuracy"
    ] <= 100
    assert record["metrics"]["llm_video_tokens"] >= 2  # two 8-frame windows, at least one trajectory each
    assert len(record["details"]["answers"]) == record["details"]["questions"]
    # the release's stage 1 (connector only): warm-started from the run, the language model stays as it was
    connector_run = tmp_path / "connector-stage"
    stage = [
        f"run_dir={connector_run}",
        f"model.init={run_dir}",
        "model.vlm.stage=connector",
        "train.steps=1",
    ]
    assert cli([*args[:-6], *stage, "train.batch_size=2", "data.num_workers=0"]) == 0
    before, after = (load_file(str(d / "weights.safetensors")) for d in (run_dir, connector_run))
    language = [k for k in before if k.startswith("language.")]
    connector = [k for k in before if k.startswith("connector.reader.")]
    assert language and all(torch.equal(before[k], after[k]) for k in language)
    assert any(not torch.equal(before[k], after[k]) for k in connector)
    # a model that answers nothing: one line
    assert cli(["eval", f"ckpt={runs['vision']}", "task=qa", *common, f"run_dir={tmp_path / 'eval2'}"]) == 2
    assert "answers no questions" in capsys.readouterr().err


def test_submit_checks_a_vlm_job_without_shards_and_says_what_dry_run_lacks(runs, tmp_path, capsys):
    qa = write_dataset(
        SynthConfig(out=str(tmp_path / "qa"), videos=2, frames=16, height=32, width=32, questions=True)
    )
    job = [
        "configs/train/trajvlm-tiny.yaml",
        f"data.manifest={qa}",
        f"model.vlm.vision={runs['vision']}",
        f"model.vlm.segmenter={runs['segmenter']}",
        f"run_dir={tmp_path / 'run'}",
        "tracking.enabled=false",
    ]
    slurm = ["launch.backend=slurm", "launch.gpus_per_node=4", "launch.dry_run=true"]
    assert cli(["submit", "train", *job, *slurm]) == 0
    assert "#SBATCH" in capsys.readouterr().out and not (tmp_path / "run").exists()
    assert cli(["train", *job, "train.dry_run=true"]) == 2
    assert "train.dry_run: not available for trajvlm" in capsys.readouterr().err
    assert cli(["submit", "train", *job[:2], f"model.vlm.vision={tmp_path / 'none'}", *slurm]) == 2
    assert "model.vlm.vision" in capsys.readouterr().err


def test_a_local_language_model_checkpoint_with_its_own_tokenizer(runs, tmp_path):
    """`model.vlm.language=<dir>`: a saved checkpoint (the tiny one here) with its own tokenizer.json."""
    tiny = vlm(runs, "patchvlm").language
    tiny.save_pretrained(tmp_path / "lm")
    (tmp_path / "lm" / "tokenizer.json").write_bytes(runs["tokenizer"].read_bytes())
    model = vlm(runs, "patchvlm", language=str(tmp_path / "lm"), tokenizer="")
    for name, value in tiny.state_dict().items():
        assert torch.equal(model.language.state_dict()[name], value), name
    with pytest.raises(ConfigError, match="model.vlm.language"):
        vlm(runs, "patchvlm", language=str(tmp_path / "none"))
