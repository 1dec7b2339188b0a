"""What every registry model returns, so training, evaluation and losses need no per-model code.

The records passed between and out of modules are dicts with attribute access (`TensorRecord`) rather than
dataclasses: DeepSpeed ZeRO-3 re-gathers a module's parameters for backward through hooks it attaches to the
tensors of the module's outputs, and it finds those tensors only in tuples, lists and dicts. It rewrites a
dict's values in place, so attribute reads see the hooked tensors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from trajtok.models.positions import Grid

_REQUIRED = object()


class TensorRecord(dict):
    """A dict whose keys are the fields annotated on the subclass, read and written as attributes.

    Built like a dataclass (positionally in declaration order, or by keyword); a field without a default is
    required. Every field is a key, None included, so the keys are the same for every instance.
    """

    _fields: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls._fields)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            # the default moves off the class, or it would hide the dict entry from attribute reads
            fields[name] = cls.__dict__.get(name, _REQUIRED)
            if name in cls.__dict__:
                delattr(cls, name)
        cls._fields = fields

    def __init__(self, *args: Any, **kwargs: Any):
        names = list(self._fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} fields, got {len(args)} positional")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in self._fields:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__} got field {name!r} twice")
            values[name] = value
        missing = [name for name in self._fields if name not in values and self._fields[name] is _REQUIRED]
        if missing:
            raise TypeError(f"{type(self).__name__} is missing fields {missing}")
        super().__init__({name: values.get(name, default) for name, default in self._fields.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        self[name] = value


class ModelOutput(TensorRecord):
    """Fields a model does not produce are None (e.g. `seg_logits` of vit3d, embeddings of `segmenter`)."""

    video_embedding: torch.Tensor | None = None  # (B, E) float, L2-normalised
    text_embedding: torch.Tensor | None = None  # (B, E) float, L2-normalised
    logit_scale: torch.Tensor | None = None  # () float: 1 / temperature, learned, clamped to <= 100
    seg_logits: torch.Tensor | None = None  # (B, T*h*w, K) float: trajectory assignment logits
    seg_grid: Grid | None = None  # (T, h, w) of seg_logits' pixel axis; h, w = H//4, W//4
    token_mask: torch.Tensor | None = None  # (B, L) bool: the video tokens the transformer attends to
    num_tokens: torch.Tensor | None = None  # (B,) long: video tokens per clip (valid ones; CLS not counted)
    class_logits: torch.Tensor | None = None  # (B, classes) float: trajadapter's classifier

    def trajectory_ids(self, clips: int) -> torch.Tensor:
        """Hard trajectory ids (clips, T, h, w) long, 1..K (0 stays free for "unlabeled" in label maps).

        A model that segments in chunks has one row of `seg_logits` per chunk: a chunk's K trajectories are
        its own, so chunk j's ids are offset by j*K and no id spans two chunks.
        """
        logits = self.seg_logits
        rows, _, queries = logits.shape
        ids = logits.argmax(dim=-1).view(rows, *self.seg_grid) + 1
        chunk = torch.arange(rows, device=ids.device) % (rows // clips)
        ids = ids + (chunk * queries)[:, None, None, None]
        return ids.view(clips, -1, *self.seg_grid[1:])
