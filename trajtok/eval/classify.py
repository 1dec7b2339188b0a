"""Zero-shot classification: class embeddings from prompt templates, averaged per class."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def class_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: class 0 with every template, then class 1, ..."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("every template needs a '{}' where the class name goes")
    return [template.format(name) for name in classes for template in templates]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_embeddings(
    classes: Sequence[str], templates: Sequence[str], embed_text: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """(num_classes, dim): the normalised mean of each class's normalised prompt embeddings."""
    prompts = class_prompts(classes, templates)
    embedded = _normalise(np.asarray(embed_text(prompts), dtype=np.float64))
    per_class = embedded.reshape(len(classes), len(templates), -1).mean(axis=1)
    return _normalise(per_class)


def classification_metrics(
    video_embeddings: np.ndarray, class_embeds: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent; ties are counted against the true class."""
    scores = _normalise(np.asarray(video_embeddings, dtype=np.float64)) @ class_embeds.T
    labels = np.asarray(labels, dtype=np.int64)
    true_scores = scores[np.arange(len(labels)), labels][:, None]
    ranks = (scores >= true_scores).sum(axis=1)
    top5 = min(5, class_embeds.shape[0])
    return {"top1": float(100.0 * (ranks <= 1).mean()), f"top{top5}": float(100.0 * (ranks <= top5).mean())}
