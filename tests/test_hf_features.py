"""Local Hugging Face vision models as frozen feature maps: tiny VideoMAE and SigLIP built from their configs
and saved to disk here (nothing downloaded), read by the probe and a VLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from exported_runs import write_weights

from trajtok.config import ClipConfig, ModelConfig, VLMConfig, load_config
from trajtok.data.normalise import IMAGENET_MEAN, IMAGENET_STD
from trajtok.data.synth_scene import COLOURS
from trajtok.errors import ConfigError
from trajtok.eval.run import evaluate
from trajtok.models.hf_features import load_hf_feature_map
from trajtok.models.registry import build_model
from trajtok.models.vlm import QATokenizer, train_qa_tokenizer

torch.set_num_threads(1)
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import SiglipVisionConfig, SiglipVisionModel, VideoMAEConfig, VideoMAEModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    video = VideoMAEConfig(**TINY, patch_size=16, tubelet_size=2, image_size=32, num_frames=4)
    VideoMAEModel(video).save_pretrained(root / "videomae")
    SiglipVisionModel(SiglipVisionConfig(**TINY, patch_size=16, image_size=32)).save_pretrained(
        root / "siglip"
    )
    (root / "siglip" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    return {"videomae": root / "videomae", "siglip": root / "siglip"}


def test_video_and_image_models_give_a_feature_grid(hf_dirs):
    frames = torch.randn(2, 4, 3, 32, 32)
    video = load_hf_feature_map(f"hf:{hf_dirs['videomae']}", "x")
    image = load_hf_feature_map(f"hf:{hf_dirs['siglip']}", "x")
    with torch.no_grad():
        assert video(frames).shape == (2, 2, 2, 2, 32)  # tubelets of 2 frames, 16 px patches
        assert image(frames).shape == (2, 4, 2, 2, 32)  # frame by frame
        # frames arrive ImageNet-normalised; SigLIP sees its own (x - 0.5) / 0.5 of the same pixels
        grey = (torch.full((3,), 0.3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        seen = grey.view(1, 1, 3, 1, 1) * image.scale + image.shift
    assert torch.allclose(seen.flatten(), torch.full((3,), (0.3 - 0.5) / 0.5), atol=1e-6)
    with pytest.raises(ConfigError, match="no Hugging Face model there"):
        load_hf_feature_map(f"hf:{hf_dirs['siglip'].parent / 'none'}", "model.vlm.vision")


def test_probe_reads_a_local_video_model(hf_dirs, tmp_path, synth_dataset):
    scenes = [json.loads(line) for line in (synth_dataset / "scenes.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (synth_dataset / "manifest.jsonl").read_text().splitlines()]
    labelled = [{**r, "label": s["objects"][0]["colour"]} for r, s in zip(rows, scenes)]
    for name, part in (("train", labelled[:12]), ("test", labelled[12:20])):
        (synth_dataset / f"hf-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    overrides = [
        "eval.task=probe",
        f"data.manifest={synth_dataset / 'hf-test.jsonl'}",
        f"eval.probe.train={synth_dataset / 'hf-train.jsonl'}",
        f"eval.probe.feature_module=hf:{hf_dirs['videomae']}",
        f"eval.probe.segmenter={write_weights(tmp_path / 'segmenter', 'segmenter')}",
        "eval.probe.steps=5",
        "eval.probe.batch_size=4",
        "eval.probe.tokens_per_trajectory=[1]",
        f"eval.classes={json.dumps(list(COLOURS))}",
        "data.num_workers=0",
        "clip.frames=4",
        "clip.size=32",
    ]
    record = evaluate(load_config(None, overrides))
    assert record["details"]["feature_shape"] == [2, 2, 2, 32]
    assert [h["head"] for h in record["details"]["heads"]] == ["linear", "attentive", "trajadapter_n1"]


def test_a_vlm_reads_a_local_image_model(hf_dirs, tmp_path):
    texts = [QATokenizer.prompt("how many shapes appear in all?"), " two"]
    tokenizer = train_qa_tokenizer(texts, tmp_path / "tokenizer.json", vocab_size=280)
    segmenter = write_weights(tmp_path / "segmenter", "segmenter")
    vlm = VLMConfig(vision=f"hf:{hf_dirs['siglip']}", segmenter=str(segmenter), tokenizer=str(tokenizer))
    model = build_model(ModelConfig(name="trajvlm", vlm=vlm), ClipConfig(frames=8, size=32)).eval()
    with torch.no_grad():
        tokens, mask = model.video_tokens(torch.randn(1, 8, 3, 32, 32))
    assert tokens.shape == (1, 16, model.language.config.hidden_size) and mask.any()
