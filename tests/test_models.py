"""Models at tiny size on CPU: shapes, padding masks, gradient paths, weights loading, shared code."""

from __future__ import annotations

import math

import pytest
import torch

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.models.backbone import ConvNeXtBackbone
from trajtok.models.clip_model import VideoTextModel
from trajtok.models.registry import MODELS, build_model
from trajtok.models.segmenter import Segmentation, Segmenter
from trajtok.models.sizes import TRANSFORMER_SIZES
from trajtok.models.text import build_tokenizer
from trajtok.models.trajectory_encoder import TrajectoryEncoder
from trajtok.models.trajectory_reader import trajectories_on_grid
from trajtok.models.transformer import Transformer

torch.set_num_threads(1)
PX = 32


def tiny(name: str, **overrides) -> torch.nn.Module:
    cfg = ModelConfig(name=name, size="tiny", **overrides)
    return build_model(cfg, ClipConfig(frames=8, size=PX))


def captions(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return build_tokenizer("bytes").encode_batch(["a red square moves left", "two discs"][:batch], 64)


@pytest.mark.parametrize("frames", [1, 8, 16])
@pytest.mark.parametrize("name", ["trajvit2", "vit3d"])
def test_video_text_shapes_and_dtypes(name: str, frames: int) -> None:
    torch.manual_seed(0)
    model = tiny(name).eval()
    ids, mask = captions(2)
    with torch.no_grad():
        out = model(torch.randn(2, frames, 3, PX, PX), ids, mask)
    assert out.video_embedding.shape == out.text_embedding.shape == (2, 32)
    assert out.video_embedding.dtype == torch.float32
    assert torch.allclose(out.video_embedding.norm(dim=-1), torch.ones(2))
    assert out.logit_scale.shape == () and torch.isclose(out.logit_scale, torch.tensor(1 / 0.07))
    assert out.token_mask.dtype == torch.bool and out.num_tokens.dtype == torch.long
    assert torch.equal(out.num_tokens, out.token_mask.sum(-1))
    if name == "vit3d":
        assert out.seg_logits is None
        assert out.token_mask.shape == (2, -(-frames // 2) * (PX // 16) ** 2) and out.token_mask.all()
    else:
        assert out.seg_grid == (frames, PX // 4, PX // 4)
        assert out.seg_logits.shape == (2, frames * (PX // 4) ** 2, 16)
        assert out.token_mask.shape == (2, 16)  # K trajectories x n = 1 at inference
        assert (out.num_tokens >= 1).all()


@pytest.mark.parametrize("frames", [1, 8, 16])
def test_segmenter_and_adapter_shapes(frames: int) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        out = tiny("segmenter").eval()(torch.randn(2, frames, 3, PX, PX))
        assert out.seg_logits.shape == (2, frames * 64, 16) and out.token_mask.shape == (2, 16)
        assert out.video_embedding is None
        adapter = tiny("trajadapter", num_classes=5, adapter_feature_dim=24).eval()
        segmenter = tiny("segmenter").eval()
        trajectories = trajectories_on_grid(segmenter, torch.randn(2, frames, 3, PX, PX), (frames, 7, 7))
        out = adapter(torch.randn(2, frames, 7, 7, 24), trajectories)
    windows = max(1, frames // 8)
    assert out.class_logits.shape == (2, 5) and out.token_mask.shape == (2, windows * 16)
    assert torch.equal(out.token_mask, trajectories.present) and torch.isfinite(out.class_logits).all()


def test_training_draws_tokens_per_trajectory_from_the_config() -> None:
    torch.manual_seed(0)
    model = tiny("trajvit2", tokens_per_trajectory=[2, 4], eval_tokens_per_trajectory=2)
    frames = torch.randn(1, 2, 3, PX, PX)
    seen = {model(frames).token_mask.shape[1] for _ in range(12)}
    assert seen == {32, 64}  # K = 16 times n in {2, 4}
    assert model.eval()(frames).token_mask.shape[1] == 32


def test_transformer_honours_the_padding_mask() -> None:
    torch.manual_seed(0)
    transformer = Transformer(TRANSFORMER_SIZES["tiny"]).eval()
    tokens = torch.randn(2, 5, 64)
    reference = transformer(tokens, torch.ones(2, 5, dtype=torch.bool))[:, 0]
    padded = torch.cat([tokens, 100 * torch.randn(2, 7, 64)], dim=1)
    mask = torch.arange(12) < 5
    mask = mask.expand(2, -1)
    assert torch.allclose(transformer(padded, mask)[:, 0], reference, atol=1e-5)
    # without the mask the padding would change the result: this test can fail
    assert not torch.allclose(transformer(padded, None)[:, 0], reference, atol=1e-3)


def _segmentation(hard: torch.Tensor, soft: torch.Tensor, grid) -> Segmentation:
    present = torch.zeros(soft.shape[0], soft.shape[2], dtype=torch.bool)
    valid = hard >= 0
    present.scatter_(1, hard.clamp_min(0), valid)
    return Segmentation(soft.log(), soft, hard, present, grid)


def test_empty_and_padded_trajectories_change_no_valid_output() -> None:
    """Trajectory encoder + transformer: extra empty trajectories leave valid tokens and CLS unchanged."""
    torch.manual_seed(0)
    grid = (2, 4, 4)
    encoder = TrajectoryEncoder(32, depth=2, heads=2, eval_tokens_per_trajectory=2).eval()
    project = torch.nn.Linear(32, 64)
    transformer = Transformer(TRANSFORMER_SIZES["tiny"]).eval()
    features = torch.randn(1, 32, 32)
    hard = torch.randint(0, 3, (1, 32))
    soft = torch.softmax(torch.randn(1, 32, 3), dim=-1)

    def run(segmentation: Segmentation) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = encoder(features, segmentation)
        return tokens[mask], transformer(project(tokens), mask)[:, 0]

    tokens, cls = run(_segmentation(hard, soft, grid))
    # 5 more trajectories that own no pixel: zero soft mass, never the argmax
    padded_soft = torch.cat([soft, torch.zeros(1, 32, 5)], dim=-1)
    padded_tokens, padded_cls = run(_segmentation(hard, padded_soft, grid))
    assert torch.allclose(padded_tokens, tokens, atol=1e-5)
    assert torch.allclose(padded_cls, cls, atol=1e-5)
    # the same trajectories in another order give the same clip embedding (no position leak across slots)
    order = torch.tensor([2, 0, 1])
    permuted = _segmentation(torch.argsort(order)[hard], soft[..., order], grid)
    assert torch.allclose(run(permuted)[1], cls, atol=1e-5)
    # with the cross-attention mask dropped, a trajectory would read other trajectories' pixels
    open_segmentation = _segmentation(torch.zeros_like(hard), soft, grid)
    assert not torch.allclose(run(open_segmentation)[0][:2], tokens[:2], atol=1e-3)


def test_all_empty_trajectories_give_no_nan() -> None:
    torch.manual_seed(0)
    encoder = TrajectoryEncoder(32, depth=1, heads=2)
    transformer = Transformer(TRANSFORMER_SIZES["tiny"])
    project = torch.nn.Linear(32, 64)
    features = torch.randn(2, 32, 32, requires_grad=True)
    soft = torch.full((2, 32, 4), 0.25)
    nobody = _segmentation(torch.full((2, 32), -1), soft, (2, 4, 4))
    tokens, mask = encoder(features, nobody)
    assert not mask.any()
    cls = transformer(project(tokens), mask)[:, 0]
    cls.sum().backward()
    assert torch.isfinite(cls).all() and torch.isfinite(features.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_contrastive_loss_alone_trains_the_segmenter_through_the_soft_path() -> None:
    from trajtok.losses import contrastive_loss

    torch.manual_seed(0)
    model = tiny("trajvit2")
    ids, mask = captions(2)
    out = model(torch.randn(2, 4, 3, PX, PX), ids, mask)
    contrastive_loss(out.video_embedding, out.text_embedding, out.logit_scale).backward()
    head = model.tokenizer.segmenter.head
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.tokenizer.segmenter.backbone.stem[0].weight.grad.abs().sum() > 0


def test_segmenter_queries_read_detached_features() -> None:
    torch.manual_seed(0)
    head = Segmenter(32, num_queries=8, depth=2, heads=2)
    features = torch.randn(1, 32, 32, requires_grad=True)
    captured = {}
    head.perceiver.register_forward_hook(lambda module, args, output: captured.setdefault("queries", output))
    segmentation = head(features, (2, 4, 4))
    # a fixed random readout: the plain sum of a layer norm's output does not depend on its input
    readout = (captured["queries"] * torch.randn_like(captured["queries"])).sum()
    (grad,) = torch.autograd.grad(readout, features, allow_unused=True)
    assert grad is None  # no gradient reaches the backbone through the query Perceiver
    (grad,) = torch.autograd.grad(segmentation.logits.sum(), features)
    assert grad.abs().sum() > 0  # ... but it does through the pixel projection


def test_no_detach_ablation_lets_the_query_perceiver_train_the_backbone() -> None:
    torch.manual_seed(0)
    head = Segmenter(32, num_queries=8, depth=2, heads=2, detach=False)
    features = torch.randn(1, 32, 32, requires_grad=True)
    captured = {}
    head.perceiver.register_forward_hook(lambda module, args, output: captured.setdefault("queries", output))
    head(features, (2, 4, 4))
    readout = (captured["queries"] * torch.randn_like(captured["queries"])).sum()
    (grad,) = torch.autograd.grad(readout, features)
    assert grad.abs().sum() > 0
    built = build_model(ModelConfig(name="segmenter", detach_features=False), ClipConfig())
    assert built.head.detach is False


def test_no_hard_mask_ablation_reads_every_pixel_weighted_by_the_soft_mask() -> None:
    torch.manual_seed(0)
    grid = (2, 4, 4)
    features = torch.randn(1, 32, 32)
    hard = torch.randint(0, 3, (1, 32))
    soft = torch.softmax(torch.randn(1, 32, 3), dim=-1)
    segmentation = _segmentation(hard, soft, grid)
    reads = {}

    def tokens(hard_mask: bool) -> torch.Tensor:
        torch.manual_seed(1)
        encoder = TrajectoryEncoder(32, depth=1, heads=2, eval_tokens_per_trajectory=2, hard_mask=hard_mask)

        def record(module, args, kwargs, out) -> None:
            reads[hard_mask] = args[2] if len(args) > 2 else None  # the cross mask, when one is passed

        encoder.perceiver.register_forward_hook(record, with_kwargs=True)
        return encoder.eval()(features, segmentation)[0]

    soft_tokens, hard_tokens = tokens(False), tokens(True)
    assert reads[True] is None  # packed: by pixel index
    bias = reads[False]
    assert bias.dtype == torch.float32 and bias.shape == (1, 6, 32)
    assert torch.allclose(bias[0, 2 * 1], soft[0, :, 1].log(), atol=1e-6)  # token of trajectory 1 reads all
    assert not torch.allclose(soft_tokens, hard_tokens, atol=1e-3)


def test_segmenter_output_is_consistent() -> None:
    torch.manual_seed(0)
    segmentation = Segmenter(32, num_queries=8, depth=2, heads=2)(torch.randn(2, 32, 32), (2, 4, 4))
    assert torch.allclose(segmentation.soft.sum(-1), torch.ones(2, 32))
    assert torch.equal(segmentation.hard, segmentation.logits.argmax(-1))
    for b in range(2):
        assert set(segmentation.hard[b].tolist()) == set(
            torch.nonzero(segmentation.present[b])[:, 0].tolist()
        )
    assert segmentation.logits.abs().max() <= 20


def test_trajvit2_and_vit3d_share_transformer_and_heads() -> None:
    traj, vit = tiny("trajvit2"), tiny("vit3d")
    assert type(traj) is type(vit) is VideoTextModel
    for part in ("transformer", "video_head", "text_head", "text_tower", "logit_scale"):
        assert type(getattr(traj, part)) is type(getattr(vit, part))
    shared = {k: v.shape for k, v in traj.state_dict().items() if not k.startswith("tokenizer.")}
    assert shared == {k: v.shape for k, v in vit.state_dict().items() if not k.startswith("tokenizer.")}
    assert traj.registry_name == "trajvit2" and set(MODELS) == {
        "trajvit2",
        "vit3d",
        "segmenter",
        "trajadapter",
    }


@pytest.mark.parametrize("name", ["trajvit2", "vit3d"])
def test_the_transformer_runs_once_per_forward(name: str) -> None:
    model = tiny(name)
    calls = []
    model.transformer.register_forward_hook(lambda *_: calls.append(1))
    model(torch.randn(1, 2, 3, PX, PX), *captions(1))
    assert len(calls) == 1  # the text tower has its own transformer instance


def test_pretrained_segmenter_loads_into_trajvit2() -> None:
    segmenter, traj = tiny("segmenter"), tiny("trajvit2")
    traj.tokenizer.segmenter.load_state_dict(segmenter.state_dict())
    assert torch.equal(traj.tokenizer.segmenter.head.queries, segmenter.head.queries)


def test_3d_rotary_option() -> None:
    torch.manual_seed(0)
    frames = torch.randn(1, 2, 3, PX, PX)
    out_1d = tiny("segmenter").eval()(frames)
    torch.manual_seed(0)
    out_3d = tiny("segmenter", rotary="3d").eval()(frames)
    assert out_3d.seg_logits.shape == out_1d.seg_logits.shape
    assert not torch.allclose(out_3d.seg_logits, out_1d.seg_logits)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "vit4d"}, "unknown model"),
        ({"size": "huge"}, "unknown size"),
        ({"tokens_per_trajectory": [1, 8]}, "1..4"),
        ({"rotary": "2d"}, "rotary"),
        ({"name": "trajadapter"}, "num_classes"),
        ({"text_tokenizer": "bpe:/nonexistent/tokenizer.json"}, "not found"),
        ({"backbone_weights": "/nonexistent.pth"}, "not found"),
    ],
)
def test_bad_model_config_is_a_config_error(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(**overrides), ClipConfig(size=PX))


def test_vit3d_needs_a_multiple_of_16() -> None:
    with pytest.raises(ConfigError, match="clip.size 40"):
        build_model(ModelConfig(name="vit3d"), ClipConfig(size=40))


# torchvision's ConvNeXt layout, written out here independently of the loader's renaming
def _torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts = {"conv_dw": "block.0", "norm": "block.2", "mlp.fc1": "block.3", "mlp.fc2": "block.5"}
    out = {}
    for key, value in state.items():
        p = key.split(".")
        if p[0] == "stem":
            out[f"features.0.{p[1]}.{p[2]}"] = value
        elif p[2] == "downsample":
            out[f"features.{2 * int(p[1])}.{p[3]}.{p[4]}"] = value
        elif p[-1] == "gamma":
            out[f"features.{2 * int(p[1]) + 1}.{p[3]}.layer_scale"] = value.view(-1, 1, 1)
        else:
            part = parts[".".join(p[4:-1])]
            out[f"features.{2 * int(p[1]) + 1}.{p[3]}.{part}.{p[-1]}"] = value
    out["classifier.2.weight"] = torch.zeros(10, 128)
    return out


@pytest.mark.parametrize("layout", ["timm", "timm-safetensors", "torchvision"])
def test_backbone_loads_local_convnext_weights(tmp_path, layout: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = ConvNeXtBackbone((16, 32, 64, 128), (1, 1, 1, 1), 32)
    trunk = {k: v for k, v in source.state_dict().items() if not k.startswith("projections.")}
    path = tmp_path / ("w.safetensors" if layout == "timm-safetensors" else "w.pth")
    if layout == "timm-safetensors":
        save_file({**trunk, "head.fc.weight": torch.zeros(10, 128)}, path)
    elif layout == "timm":
        torch.save({"state_dict": {**trunk, "head.fc.weight": torch.zeros(10, 128)}}, path)
    else:
        torch.save(_torchvision_names(trunk), path)
    torch.manual_seed(2)
    target = build_model(ModelConfig(name="segmenter", backbone_weights=str(path)), ClipConfig(size=PX))
    loaded = target.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trunk.items())
    with torch.device("meta"):  # shapes-only builds (model-info, checkpoint export) need not read the file
        build_model(ModelConfig(name="segmenter", backbone_weights="/gone.pth"), ClipConfig(size=PX))
    with pytest.raises(ConfigError, match="choose the matching model.size"):
        ConvNeXtBackbone((24, 48, 96, 192), (1, 1, 1, 1), 32).load_convnext_weights(path)
    with pytest.raises(ConfigError, match="weights missing"):
        ConvNeXtBackbone((16, 32, 64, 128), (2, 1, 1, 1), 32).load_convnext_weights(path)


def test_assignment_heads_and_their_initial_scale() -> None:
    """The release's heads (D -> 128 -> 64) by default, the D -> D -> D ones on request, both starting at
    scale 10; the release's own start, softplus(log 16) + 1, on request, within what the clamp allows."""
    release = build_model(ModelConfig(name="segmenter"), ClipConfig()).head
    assert [m.out_features for m in release.pixel_head if isinstance(m, torch.nn.Linear)] == [128, 64]
    assert float(release.logit_scale().detach()) == pytest.approx(10.0)
    mlp = build_model(ModelConfig(name="segmenter", assignment_head="mlp"), ClipConfig()).head
    assert mlp.pixel_head.fc2.out_features == 32 and float(mlp.logit_scale().detach()) == pytest.approx(10.0)
    as_released = build_model(ModelConfig(name="segmenter", logit_scale_init=3.8333), ClipConfig()).head
    assert float(as_released.logit_scale().detach()) == pytest.approx(1 + math.log(17.0), abs=1e-4)
    for bad in (dict(logit_scale_init=25.0), dict(assignment_head="wide")):
        with pytest.raises(ConfigError):
            build_model(ModelConfig(name="segmenter", **bad), ClipConfig())


def test_the_assignment_is_computed_in_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    head = Segmenter(32, num_queries=8, depth=1, heads=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        segmentation = head(torch.randn(1, 32, 32), (2, 4, 4))
    assert segmentation.logits.dtype == torch.float32
