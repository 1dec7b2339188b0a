"""`model.init`: an exported run's weights into the parts of a new model that match, strict about shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from exported_runs import write_weights
from safetensors.torch import load_file

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.models.registry import build_model
from trajtok.train.warm_start import warm_start

CLIP = ClipConfig(frames=8, size=32)


def _fresh(name: str = "trajvit2", seed: int = 1, **model: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, size="tiny", **model), CLIP)


def test_a_segmenter_run_starts_the_tokenizer_of_trajvit2_and_nothing_else(tmp_path: Path):
    run = write_weights(tmp_path / "seg", "segmenter", step=150)
    saved = load_file(str(run / "weights.safetensors"))
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    started = warm_start(model, str(run))

    assert started.loaded == ("backbone", "segmenter") and started.source_step == 150
    assert "transformer" in started.kept and "trajectory_encoder" in started.kept
    after = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(after[f"tokenizer.segmenter.{key}"], value), key
    untouched = [k for k in after if not k.startswith("tokenizer.segmenter.")]
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)
    assert "loaded backbone, segmenter; left at init: trajectory_encoder" in started.describe()


def test_a_run_of_the_same_model_loads_every_part(tmp_path: Path):
    run = write_weights(tmp_path / "t", "trajvit2")
    model = _fresh()
    started = warm_start(model, str(run / "weights.safetensors"))
    assert started.kept == ()
    saved = load_file(str(run / "weights.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize(
    ("source", "target", "match"),
    [
        (dict(name="segmenter", num_queries=8), dict(), r"'segmenter' weight 'queries' has shape \(8, 32"),
        (dict(name="segmenter"), dict(name="vit3d"), "shares no part with vit3d"),
    ],
)
def test_mismatched_runs_are_one_line_config_errors(tmp_path: Path, source: dict, target: dict, match):
    name = source.pop("name")
    run = write_weights(tmp_path / "r", name, **source)
    with pytest.raises(ConfigError, match=match):
        warm_start(_fresh(**target), str(run))


def test_a_path_without_weights_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"model.init '.*nowhere': no weights there"):
        warm_start(_fresh(), str(tmp_path / "nowhere"))


def test_a_segmenter_run_starts_a_shared_kv_trajvit2_without_its_own_projection(tmp_path: Path):
    """With model.shared_kv the segmenter reads the encoder's keys and values: its own projection has
    nowhere to go, is left out and said so; everything else of the segmenter loads as usual."""
    run = write_weights(tmp_path / "seg", "segmenter")
    saved = load_file(str(run / "weights.safetensors"))
    model = _fresh(shared_kv=True)
    started = warm_start(model, str(run))
    projection = [key for key in saved if key.startswith("head.perceiver.reader.")]
    assert projection and len(started.dropped) == len(projection)
    after = model.state_dict()
    loaded = [key for key in saved if key not in projection]
    assert all(torch.equal(after[f"tokenizer.segmenter.{key}"], saved[key]) for key in loaded)
    assert "not used (model.shared_kv)" in started.describe()
