"""The model registry: one name per model, the same in configs, training, evaluation and checkpoints.

`build_model(model_cfg, clip_cfg)` is the only way jobs make a model. What each name gives:

`trajvit2` and `vit3d` (a `VideoTextModel`; the same transformer, heads and text tower, different tokenizer)
    model(frames, text_tokens=None, text_mask=None) -> ModelOutput
      frames: (B, T, 3, H, W) float, ImageNet-normalised; images are T = 1. H, W multiples of 4 (vit3d: 16).
      text_tokens, text_mask: (B, L) long and bool, both or neither, from
        `build_tokenizer(model.text_tokenizer).encode_batch(captions, model.text_max_len)` (models/text.py).
      -> video_embedding, text_embedding (B, E) normalised; logit_scale (); token_mask (B, L_video) bool;
         num_tokens (B,); seg_logits (B, T*h*w, K) with seg_grid (T, h, w), h = H//4 (None for vit3d).
    model.encode_video(frames) -> (B, E); model.encode_text(text_tokens, text_mask) -> (B, E).
    TrajViT2 makes n tokens per trajectory: in training mode drawn per step from the config's
    model.tokens_per_trajectory, in eval mode model.eval_tokens_per_trajectory (settable afterwards as
    `model.tokenizer.encoder.eval_tokens_per_trajectory`).
`segmenter` (backbone + segmenter, for segmenter pre-training and as a pseudo-labeler)
    model(frames) -> ModelOutput with seg_logits, seg_grid, token_mask = non-empty trajectories (B, K).
    Its state dict loads into a TrajViT2's `tokenizer.segmenter`.
`trajadapter` (probing head over another model's frozen features)
    model(features (B, T', h', w', C = model.adapter_feature_dim), trajectories) -> ModelOutput with
    class_logits (B, classes), token_mask, num_tokens; `trajectories` from
    `trajtok.models.trajectory_reader.trajectories_on_grid` with a trained segmenter (query width
    model.adapter_query_dim; with model.hard_mask=false the trajectories need their coverage).

Losses for all of them: `trajtok.losses.total_loss(output, labels, loss_cfg, mode)`. Every model has
`parts() -> {name: module}` (parameter counts, per-part learning rates) and `registry_name`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from trajtok.config import VLM_NAMES, ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.models.backbone import ConvNeXtBackbone
from trajtok.models.clip_model import VideoTextModel
from trajtok.models.feature_maps import VisionTower
from trajtok.models.hf_features import PREFIX as HF_PREFIX
from trajtok.models.hf_features import load_hf_feature_map
from trajtok.models.rlt import RunLengthTokenizer
from trajtok.models.segmenter import ASSIGNMENT_HEADS, MAX_LOGIT_SCALE, Segmenter, VideoSegmenter
from trajtok.models.sizes import TRANSFORMER_SIZES, ModelSize, resolve_size
from trajtok.models.text import build_text_tower, build_tokenizer
from trajtok.models.tome import ToMeTransformer
from trajtok.models.trajadapter import TrajAdapter
from trajtok.models.trajectory_encoder import MAX_TOKENS_PER_TRAJECTORY, TrajectoryEncoder
from trajtok.models.trajectory_reader import (
    TrajectoryReader,
    TrajTokConnector,
    load_segmenting_model,
    query_width,
)
from trajtok.models.trajvit2 import TrajectoryTokenizer
from trajtok.models.transformer import Transformer
from trajtok.models.vit3d import TUBELET, TubeletTokenizer
from trajtok.models.vlm import (
    PatchConnector,
    QATokenizer,
    VideoLanguageModel,
    build_language_model,
    tokenizer_location,
)
from trajtok.models.weights import load_weights, weights_file


def _size(cfg: ModelConfig) -> ModelSize:
    return resolve_size(cfg.size, cfg.num_queries, cfg.embed_dim, cfg.transformer)


def _segmenter_head(cfg: ModelConfig, size: ModelSize, reads_context: bool = True) -> Segmenter:
    return Segmenter(
        size.feature_dim,
        size.num_queries,
        size.segmenter_depth,
        size.perceiver_heads,
        cfg.rotary,
        detach=cfg.detach_features,
        head=cfg.assignment_head,
        pooled=cfg.pooled_read,
        reads_context=reads_context,
        initial_scale=cfg.logit_scale_init,
    )


def _video_segmenter(cfg: ModelConfig, size: ModelSize, reads_context: bool = True) -> VideoSegmenter:
    backbone = ConvNeXtBackbone(size.stage_widths, size.stage_depths, size.feature_dim)
    if cfg.backbone_weights and backbone.stem[0].weight.device.type != "meta":  # shapes-only builds read none
        backbone.load_convnext_weights(cfg.backbone_weights)
    if cfg.channels_last:
        backbone.use_channels_last()
    return VideoSegmenter(backbone, _segmenter_head(cfg, size, reads_context))


def _trajectory_encoder(cfg: ModelConfig, size: ModelSize) -> TrajectoryEncoder:
    return TrajectoryEncoder(
        size.feature_dim,
        size.encoder_depth,
        size.perceiver_heads,
        cfg.rotary,
        train_tokens_per_trajectory=tuple(cfg.tokens_per_trajectory),
        eval_tokens_per_trajectory=cfg.eval_tokens_per_trajectory,
        packed=cfg.packed,
        hard_mask=cfg.hard_mask,
        pooled=cfg.pooled_read,
    )


def _video_text_model(cfg: ModelConfig, size: ModelSize, tokenizer: nn.Module) -> VideoTextModel:
    text_tower = build_text_tower(
        cfg.text_tokenizer, build_tokenizer(cfg.text_tokenizer), cfg.text_max_len, size.text
    )
    layers = TRANSFORMER_SIZES[size.transformer]
    transformer = ToMeTransformer(layers, cfg.tome_r) if cfg.tome_r else Transformer(layers, cfg.packed)
    return VideoTextModel(tokenizer, transformer, text_tower, size.embed_dim)


def _trajvit2(cfg: ModelConfig, size: ModelSize) -> nn.Module:
    width = TRANSFORMER_SIZES[size.transformer].width
    segmenter = _video_segmenter(cfg, size, reads_context=not cfg.shared_kv)
    tokenizer = TrajectoryTokenizer(
        segmenter, _trajectory_encoder(cfg, size), width, chunk_frames=cfg.segment_chunk_frames
    )
    return _video_text_model(cfg, size, tokenizer)


def _vit3d(cfg: ModelConfig, size: ModelSize) -> nn.Module:
    width = TRANSFORMER_SIZES[size.transformer].width
    if cfg.rlt_threshold:
        return _video_text_model(cfg, size, RunLengthTokenizer(width, cfg.rlt_threshold))
    return _video_text_model(cfg, size, TubeletTokenizer(width))


def _segmenter(cfg: ModelConfig, size: ModelSize) -> nn.Module:
    return _video_segmenter(cfg, size)


def _trajadapter(cfg: ModelConfig, size: ModelSize) -> nn.Module:
    if cfg.num_classes <= 0 or cfg.adapter_feature_dim <= 0:
        raise ConfigError("model.num_classes and model.adapter_feature_dim must be > 0 for trajadapter")
    reader = TrajectoryReader(
        cfg.adapter_feature_dim, cfg.adapter_query_dim or size.feature_dim, _trajectory_encoder(cfg, size)
    )
    return TrajAdapter(reader, size.perceiver_heads, cfg.num_classes)


def _video_language_model(cfg: ModelConfig, size: ModelSize, clip: ClipConfig) -> nn.Module:
    """trajvlm / patchvlm: the vision run and the segmenter run are read from disk (their weights are then
    part of this model's own, so a trained VLM still needs the runs only for their configs)."""
    vlm = cfg.vlm
    if not vlm.vision:
        raise ConfigError(
            f"model.vlm.vision: {cfg.name} needs a trained vit3d, trajvit2 or segmenter run, or hf:<dir>"
        )
    if vlm.vision.startswith(HF_PREFIX):  # a local Hugging Face vision model (VideoMAE, SigLIP, ...)
        vision_model = load_hf_feature_map(vlm.vision, "model.vlm.vision")
    else:
        vision_model = load_weights(weights_file(vlm.vision, "model.vlm.vision"))[0]
    vision = VisionTower(vision_model, vlm.window_frames)
    tokenizer = QATokenizer(tokenizer_location(vlm.language, vlm.tokenizer))
    language = build_language_model(vlm.language, tokenizer.vocab_size)
    width = language.config.hidden_size
    with torch.no_grad():  # the feature width, from one window of the clip
        probe = torch.zeros(1, min(vlm.window_frames or clip.frames, clip.frames), 3, clip.size, clip.size)
        feature_dim = vision(probe).shape[-1]
    if cfg.name == "patchvlm":
        return VideoLanguageModel(vision, PatchConnector(feature_dim, width, vlm.patch_pool), language)
    if vlm.masks not in ("coverage", "hard"):
        raise ConfigError(f"model.vlm.masks '{vlm.masks}': choose coverage or hard")
    segmenter = load_segmenting_model(vlm.segmenter or vlm.vision, "model.vlm.segmenter")
    n = vlm.tokens_per_trajectory
    reads = {"tokens_per_trajectory": [n], "eval_tokens_per_trajectory": n, "hard_mask": vlm.masks == "hard"}
    encoder = _trajectory_encoder(dataclasses.replace(cfg, **reads, pooled_read=False), size)
    reader = TrajectoryReader(feature_dim, query_width(segmenter), encoder, width)
    connector = TrajTokConnector(segmenter, reader, vlm.window_frames, vlm.link_iou)
    return VideoLanguageModel(vision, connector, language)


MODELS: dict[str, Callable[[ModelConfig, ModelSize], nn.Module]] = {
    "trajvit2": _trajvit2,
    "vit3d": _vit3d,
    "segmenter": _segmenter,
    "trajadapter": _trajadapter,
}
REGISTRY_NAMES = (*MODELS, *VLM_NAMES)  # the VLMs build from their runs and the clip (_video_language_model)


def _check(cfg: ModelConfig, clip_cfg: ClipConfig) -> None:
    if cfg.name not in REGISTRY_NAMES:
        names = ", ".join(REGISTRY_NAMES)
        raise ConfigError(f"model.name '{cfg.name}': unknown model; choose one of {names}")
    counts = [*cfg.tokens_per_trajectory, cfg.eval_tokens_per_trajectory]
    if not cfg.tokens_per_trajectory or not all(1 <= n <= MAX_TOKENS_PER_TRAJECTORY for n in counts):
        raise ConfigError(
            f"model.tokens_per_trajectory {cfg.tokens_per_trajectory} / eval_tokens_per_trajectory "
            f"{cfg.eval_tokens_per_trajectory}: each must be in 1..{MAX_TOKENS_PER_TRAJECTORY}"
        )
    if cfg.assignment_head not in ASSIGNMENT_HEADS:
        raise ConfigError(
            f"model.assignment_head '{cfg.assignment_head}': choose one of {', '.join(ASSIGNMENT_HEADS)}"
        )
    if cfg.logit_scale_init and not 1 < cfg.logit_scale_init <= MAX_LOGIT_SCALE:
        raise ConfigError(f"model.logit_scale_init {cfg.logit_scale_init}: in (1, {MAX_LOGIT_SCALE}], or 0")
    if cfg.shared_kv and cfg.name != "trajvit2":
        raise ConfigError("model.shared_kv: only trajvit2 has two Perceivers to share keys and values")
    if cfg.rotary not in ("1d", "3d"):
        raise ConfigError(f"model.rotary '{cfg.rotary}': expected 1d or 3d")
    if cfg.tome_r < 0 or (cfg.tome_r and cfg.name != "vit3d"):
        raise ConfigError(f"model.tome_r {cfg.tome_r}: token merging is a vit3d option, with r >= 0")
    if cfg.rlt_threshold < 0 or (cfg.rlt_threshold and (cfg.name != "vit3d" or cfg.tome_r)):
        raise ConfigError(
            f"model.rlt_threshold {cfg.rlt_threshold}: run-length tokenization is a vit3d option (not with "
            "tome_r), with a threshold >= 0"
        )
    chunk = cfg.segment_chunk_frames
    if chunk < 0 or (chunk and (cfg.name != "trajvit2" or clip_cfg.frames % chunk)):
        raise ConfigError(
            f"model.segment_chunk_frames {chunk}: a trajvit2 option that must divide clip.frames "
            f"({clip_cfg.frames}); 0 = the whole clip"
        )
    multiple = TUBELET[1] if cfg.name in ("vit3d", *VLM_NAMES) else 4
    if cfg.name != "trajadapter" and clip_cfg.size % multiple:
        raise ConfigError(f"clip.size {clip_cfg.size}: {cfg.name} needs a multiple of {multiple}")


def build_model(model_cfg: ModelConfig, clip_cfg: ClipConfig) -> nn.Module:
    """A freshly initialised model (with local backbone weights if configured); see the module docstring."""
    _check(model_cfg, clip_cfg)
    if model_cfg.name in VLM_NAMES:
        model = _video_language_model(model_cfg, _size(model_cfg), clip_cfg)
    else:
        model = MODELS[model_cfg.name](model_cfg, _size(model_cfg))
    model.registry_name = model_cfg.name
    if model_cfg.compile:
        compile_parts(model)
    return model


def compile_parts(model: nn.Module) -> None:
    """torch.compile each part in place (state-dict names and `parts()` stay as they are).

    Parts, not the whole model: TrajViT2 draws tokens per trajectory in Python each step, which would break
    one whole-model graph; per part, each n is one more cached graph of the encoder.
    """
    for module in model.modules():  # methods a module keeps out of the graph (its `compile_disabled`)
        for name in getattr(module, "compile_disabled", ()):
            setattr(module, name, torch.compiler.disable(getattr(module, name)))
    for part in model.parts().values():
        for module in part if isinstance(part, nn.ModuleList) else [part]:
            module.compile()
