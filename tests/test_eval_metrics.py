"""Retrieval and classification metrics on hand-made similarity matrices with known ranks."""

from __future__ import annotations

import numpy as np
import pytest

from trajtok.eval.classify import class_embeddings, class_prompts, classification_metrics
from trajtok.eval.retrieval import dual_softmax, retrieval_metrics


def test_identity_similarity_is_perfect():
    m = retrieval_metrics(np.eye(4), np.arange(4))
    assert m["t2v_R@1"] == 100.0 and m["v2t_R@1"] == 100.0
    assert m["t2v_MedR"] == 1.0 and m["v2t_MeanR"] == 1.0


def test_known_ranks():
    # caption i's video is i; caption 0 ranks its video 2nd, caption 1 ranks it 3rd, caption 2 first.
    sim = np.array([[0.8, 0.9, 0.1], [0.7, 0.2, 0.9], [0.0, 0.1, 0.5]])
    m = retrieval_metrics(sim, np.arange(3))
    assert m["t2v_R@1"] == pytest.approx(100 / 3)
    assert m["t2v_MedR"] == 2.0 and m["t2v_MeanR"] == pytest.approx(2.0)
    # video-to-text: video 0 ranks caption 0 (0.8) 1st; video 1 ranks caption 1 (0.2) below 0.9: 2nd;
    # video 2 ranks caption 2 (0.5) below 0.9: 2nd.
    assert m["v2t_R@1"] == pytest.approx(100 / 3)
    assert m["v2t_MeanR"] == pytest.approx(5 / 3)


def test_ties_count_against_the_target():
    m = retrieval_metrics(np.ones((5, 5)), np.arange(5))
    assert m["t2v_R@1"] == 0.0 and m["t2v_MedR"] == 5.0
    assert m["v2t_R@5"] == 100.0 and m["v2t_R@1"] == 0.0


def test_several_captions_per_video_take_the_best_caption():
    # 2 videos, 4 captions: captions 0, 1 describe video 0; captions 2, 3 describe video 1.
    sim = np.array([[0.1, 0.9], [0.9, 0.0], [0.8, 0.2], [0.0, 0.7]])
    m = retrieval_metrics(sim, np.array([0, 0, 1, 1]))
    assert m["t2v_R@1"] == 50.0  # captions 1 and 3 are right, 0 and 2 are wrong
    # video 0: caption 1 scores 0.9, best of all -> rank 1. video 1: caption 3 scores 0.7, below 0.9 -> 2.
    assert m["v2t_R@1"] == 50.0 and m["v2t_MeanR"] == 1.5


def test_video_without_caption_is_an_error():
    with pytest.raises(ValueError, match="without a caption"):
        retrieval_metrics(np.eye(3)[:2], np.array([0, 1]))


def test_dual_softmax_fixes_a_hub_video():
    # video 0 is a hub: every caption likes it a little more than its own video.
    sim = np.array([[0.9, 0.1, 0.1], [0.6, 0.5, 0.1], [0.6, 0.1, 0.5]])
    assert retrieval_metrics(sim, np.arange(3))["t2v_R@1"] < 100.0
    assert retrieval_metrics(dual_softmax(sim), np.arange(3))["t2v_R@1"] == 100.0


def test_classification_with_templates_averages_per_class():
    templates = ["a video of {}.", "{} on video"]
    classes = ["cat", "dog", "car"]
    assert class_prompts(classes, templates)[:2] == ["a video of cat.", "cat on video"]
    basis = {"cat": [1.0, 0.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0, 0.0], "car": [0.0, 0.0, 1.0, 0.0]}

    def embed_text(prompts: list[str]) -> np.ndarray:
        # Each prompt points at its class, plus a template-specific offset that averaging cancels.
        out = []
        for prompt in prompts:
            name = next(c for c in classes if c in prompt)
            offset = [0.0, 0.0, 0.0, 0.5 if prompt.startswith("a video") else -0.5]
            out.append(np.array(basis[name]) + np.array(offset))
        return np.stack(out)

    embeds = class_embeddings(classes, templates, embed_text)
    np.testing.assert_allclose(embeds, np.eye(4)[:3], atol=1e-9)
    videos = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0], [0.1, 0.0, 0.9, 0.0]])
    metrics = classification_metrics(videos, embeds, np.array([0, 2, 1]))
    assert metrics["top1"] == pytest.approx(200 / 3)
    assert metrics["top3"] == 100.0


def test_template_without_placeholder_is_rejected():
    with pytest.raises(ValueError, match="template"):
        class_prompts(["cat"], ["a video"])
