"""What a model costs: parameters per part, forward FLOPs and tokens per clip (`trajtok model-info`).

The model is built on the meta device, so even paper scale costs no memory and no compute: FLOPs come
from torch's FlopCounterMode over shapes alone. That works because no forward has a data-dependent shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from trajtok.config import ClipConfig, ModelConfig
from trajtok.models.clip_model import VideoTextModel
from trajtok.models.registry import build_model
from trajtok.models.sizes import resolve_size
from trajtok.models.trajectory_reader import DEFAULT_CHUNK_FRAMES, ForeignTrajectories
from trajtok.models.vit3d import TUBELET


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, **kwargs) -> int:
    """Each gradient (input, weight) of a convolution costs what its forward does.

    torch's own count ignores groups in backward: for the backbone's depthwise 7x7 convolutions it counts
    channels + 1 times the real work (49x at 48 channels), which made TrajViT2's training FLOPs look larger
    than its forward and backward are.
    """
    transposed, output_mask = args[4], args[7]  # after bias sizes, stride, padding, dilation; groups at 6
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting the CPU attention kernel (torch counts the CUDA ones only) and
    grouped convolutions' backward right."""
    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
            aten.convolution_backward: _conv_backward_flops,
        },
    )


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _gflops(run) -> float | None:
    """GFLOPs of `run()` on meta tensors; None when it needs data (a Hugging Face text model's masks)."""
    try:
        with flop_counter() as counter:
            run()
    except RuntimeError as err:
        if "meta" not in str(err):
            raise
        return None
    return counter.get_total_flops() / 1e9


def _example_input(model_cfg: ModelConfig, clip_cfg: ClipConfig) -> tuple[tuple[Any, ...], str]:
    frames, px = clip_cfg.frames, clip_cfg.size
    if model_cfg.name == "trajadapter":  # a ViT-like feature map: one vector per 16x16 patch and frame
        grid = (frames, px // TUBELET[1], px // TUBELET[2])
        shape = (1, *grid, model_cfg.adapter_feature_dim)
        size = resolve_size(model_cfg.size, model_cfg.num_queries)
        slots = size.num_queries * max(1, frames // DEFAULT_CHUNK_FRAMES)  # K per segmentation window
        ids = torch.zeros(1, math.prod(grid), dtype=torch.long, device="meta")
        queries = torch.zeros(1, slots, model_cfg.adapter_query_dim or size.feature_dim, device="meta")
        trajectories = ForeignTrajectories.from_ids(ids, queries, grid)
        return (torch.zeros(shape, device="meta"), trajectories), "features " + "x".join(map(str, shape[1:]))
    return (torch.zeros(1, frames, 3, px, px, device="meta"),), f"clip {frames}x{px}x{px}"


def model_summary(model_cfg: ModelConfig, clip_cfg: ClipConfig) -> dict[str, Any]:
    """Parameters per part, forward GFLOPs (batch 1) and video tokens per clip of the configured model."""
    model_cfg = dataclasses.replace(model_cfg, backbone_weights="")  # weights change no count
    with torch.device("meta"):
        model = build_model(model_cfg, clip_cfg).eval()
    parameters = {name: _count(part) for name, part in model.parts().items()}
    parameters["total"] = _count(model)
    example, input_name = _example_input(model_cfg, clip_cfg)
    if isinstance(model, VideoTextModel):
        ids = torch.zeros(1, model_cfg.text_max_len, dtype=torch.long, device="meta")
        mask = torch.ones(1, model_cfg.text_max_len, dtype=torch.bool, device="meta")
        gflops = {
            "video": _gflops(lambda: model.encode_video(*example)),
            "text": _gflops(lambda: model.encode_text(ids, mask)),
        }
    else:
        gflops = {"forward": _gflops(lambda: model(*example))}
    tokens = model(*example).token_mask.shape[1]
    if model_cfg.name == "vit3d":
        token_note = f"{TUBELET[0]}x{TUBELET[1]}x{TUBELET[2]} tubelets"
    else:
        per_trajectory = 1 if model_cfg.name == "segmenter" else model_cfg.eval_tokens_per_trajectory
        token_note = (
            f"at most: {tokens // per_trajectory} trajectories x {per_trajectory}; trajectories owning no "
            "pixel are dropped"
        )
    return {
        "model": model_cfg.name,
        "size": model_cfg.size,
        "input": input_name,
        "text_tokens": model_cfg.text_max_len if "text" in gflops else 0,
        "parameters": parameters,
        "gflops": gflops,
        "tokens_per_clip": tokens,
        "tokens_note": token_note,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned plain-text table."""
    rows = [(f"parameters: {name}", f"{count / 1e6:,.2f} M") for name, count in summary["parameters"].items()]
    for name, value in summary["gflops"].items():
        detail = f"{summary['text_tokens']} tokens, batch 1" if name == "text" else "batch 1"
        shown = "n/a (needs real data)" if value is None else f"{value:,.1f}"
        rows.append((f"forward GFLOPs: {name} ({detail})", shown))
    rows.append(("video tokens per clip", f"{summary['tokens_per_clip']} ({summary['tokens_note']})"))
    width = max(len(label) for label, _ in rows)
    header = f"{summary['model']} (size {summary['size']}), {summary['input']}"
    return "\n".join([header, *(f"  {label:<{width}}  {value}" for label, value in rows)])
