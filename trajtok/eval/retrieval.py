"""Zero-shot retrieval metrics from a caption-by-video similarity matrix.

Ties are ranked pessimistically: a video tied with the right one counts as ranked above it. A model that
outputs constant similarities therefore scores at chance, never at 100%.
"""

from __future__ import annotations

import numpy as np


def dual_softmax(similarity: np.ndarray, temperature: float = 100.0) -> np.ndarray:
    """Re-weight similarities by a softmax over the other axis (the 'dual softmax' inference trick).

    Reported separately from plain retrieval: it uses the whole test set at once, which a deployed
    retrieval system cannot.
    """
    logits = similarity * temperature
    logits = logits - logits.max(axis=0, keepdims=True)
    prior = np.exp(logits)
    prior /= prior.sum(axis=0, keepdims=True)
    return similarity * prior


def ranks_of_targets(similarity: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of `targets[i]` in row i, with ties counted against the target."""
    rows = np.arange(similarity.shape[0])
    target_scores = similarity[rows, targets][:, None]
    return (similarity >= target_scores).sum(axis=1)


def rank_metrics(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """R@1/5/10 in percent, median and mean rank."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {f"{prefix}_R@{k}": float(100.0 * (ranks <= k).mean()) for k in (1, 5, 10)}
    metrics[f"{prefix}_MedR"] = float(np.median(ranks))
    metrics[f"{prefix}_MeanR"] = float(ranks.mean())
    return metrics


def retrieval_metrics(similarity: np.ndarray, caption_to_video: np.ndarray) -> dict[str, float]:
    """Text-to-video and video-to-text metrics.

    `similarity` is (num_captions, num_videos); `caption_to_video[i]` is the video caption i describes, so
    a video may have several captions. Text-to-video ranks each caption's video among all videos;
    video-to-text ranks each video's best-ranked caption among all captions (the usual protocol when a
    video has several captions).
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    caption_to_video = np.asarray(caption_to_video, dtype=np.int64)
    num_captions, num_videos = similarity.shape
    if caption_to_video.shape != (num_captions,):
        raise ValueError(f"caption_to_video has shape {caption_to_video.shape}, expected ({num_captions},)")
    missing = np.setdiff1d(np.arange(num_videos), caption_to_video)
    if missing.size:
        raise ValueError(f"videos without a caption: {missing[:10].tolist()}")

    t2v = ranks_of_targets(similarity, caption_to_video)

    own_scores = similarity[np.arange(num_captions), caption_to_video]
    # Column c: every caption's score against caption c's video; its rank among them, ties against it.
    caption_ranks = (similarity[:, caption_to_video] >= own_scores[None, :]).sum(axis=0)
    v2t = np.full(num_videos, num_captions, dtype=np.int64)
    np.minimum.at(v2t, caption_to_video, caption_ranks)
    return {**rank_metrics(t2v, "t2v"), **rank_metrics(v2t, "v2t")}


def chance_recall_at_1(num_videos: int) -> float:
    """R@1 in percent of a random ranking over `num_videos` videos."""
    return 100.0 / num_videos
