"""Class-agnostic space-time segmentation quality: a predicted trajectory map against ground truth.

Pseudo-labelers and the learned segmenter are judged by the same code. Both maps are (T, H, W) integer
arrays of trajectory ids. In the ground truth, 0 is the background: it is one true segment for the
measures of region purity (a predicted region that leaks from an object into the background is impure) but
not an object to recover. In the prediction, 0 means unlabeled: those voxels belong to no region.

Object-level measures (VEQ, STQ) say how well whole objects are found and followed; supervoxel measures
(purity, best overlap, under-segmentation error) fit an over-segmentation into sub-object parts, which is
what pseudo-labels are, and which VEQ penalises by design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.optimize import linear_sum_assignment

MATCH_IOU = 0.5


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one clip; higher is better except `undersegmentation_error`."""

    veq: float  # video entity quality = veq_sq * veq_rq
    veq_sq: float  # mean 3D IoU of matched tubes
    veq_rq: float  # TP / (TP + FP/2 + FN/2)
    stq: float  # sqrt(stq_aq * stq_sq)
    stq_aq: float  # association quality
    stq_sq: float  # foreground/background IoU with each predicted region's majority semantics
    purity: float  # voxel-weighted share of each predicted region inside one true segment
    mean_best_overlap: float  # mean over true objects of the best 3D IoU with one predicted region
    undersegmentation_error: float  # leakage across true boundaries, share of labeled voxels
    mean_duration: float  # frames a predicted trajectory appears in, averaged over trajectories
    duration_fraction: float  # mean_duration / T
    num_trajectories: int
    num_objects: int  # true objects (non-zero ground-truth ids)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class _Overlap:
    """Voxel counts shared by every measure: the contingency table of predicted and true ids."""

    table: np.ndarray  # (P + 1, G + 1) voxels; row 0 = unlabeled prediction, column 0 = background
    pred_ids: np.ndarray  # (P,) ids of rows 1..P
    gt_ids: np.ndarray  # (G,) ids of columns 1..G

    @property
    def pred_size(self) -> np.ndarray:
        return self.table[1:].sum(axis=1)

    @property
    def gt_size(self) -> np.ndarray:
        return self.table[:, 1:].sum(axis=0)

    def iou(self) -> np.ndarray:
        """(P, G) 3D IoU of every predicted tube with every true object."""
        inter = self.table[1:, 1:].astype(np.float64)
        union = self.pred_size[:, None] + self.gt_size[None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to 0..N (0 stays 0): returns the dense index map and the original non-zero ids."""
    flat = labels.ravel()
    if flat.dtype.kind not in "ui":
        raise ValueError(f"label maps must hold integers, got {labels.dtype}")
    if flat.size and flat.min() < 0:
        raise ValueError("label ids must be non-negative")
    present = np.bincount(flat) > 0 if flat.size else np.zeros(1, bool)
    ids = np.flatnonzero(present[1:]) + 1
    lut = np.zeros(len(present), dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[flat], ids


def _overlap(pred: np.ndarray, gt: np.ndarray) -> _Overlap:
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be the same (T, H, W)")
    p, pred_ids = _compact(pred)
    g, gt_ids = _compact(gt)
    cols = len(gt_ids) + 1
    table = np.bincount(p * cols + g, minlength=(len(pred_ids) + 1) * cols).reshape(-1, cols)
    return _Overlap(table=table, pred_ids=pred_ids, gt_ids=gt_ids)


def _veq(ov: _Overlap) -> tuple[float, float, float]:
    """One-to-one Hungarian matching of tubes; a match counts at IoU >= 0.5. Unmatched predicted tubes
    lying mostly on background are not false positives (as void is treated in panoptic quality)."""
    iou = ov.iou()
    tp_iou = np.zeros(0)
    matched = np.zeros(len(ov.pred_ids), bool)
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        good = iou[rows, cols] >= MATCH_IOU
        tp_iou, matched[rows[good]] = iou[rows, cols][good], True
    on_background = ov.table[1:, 0] * 2 > ov.pred_size
    tp = len(tp_iou)
    fp = int(np.count_nonzero(~matched & ~on_background))
    fn = len(ov.gt_ids) - tp
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    sq = float(tp_iou.mean()) if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return sq * rq, sq, rq


def _stq(ov: _Overlap) -> tuple[float, float, float]:
    """STQ = sqrt(AQ * SQ). AQ: for each true object, its overlaps with predicted tubes weighted by the
    overlap size and scored by their IoU, over the object's size; averaged over objects. SQ has no classes
    to compare here, so it is the mean IoU of foreground and background when each predicted region takes the
    majority side of the voxels it covers (unlabeled prediction counts as background)."""
    inter = ov.table[1:, 1:].astype(np.float64)
    if len(ov.gt_ids):
        aq = float(np.mean((inter * ov.iou()).sum(axis=0) / ov.gt_size))
    else:
        aq = 1.0
    fg_votes = ov.table[1:, 1:].sum(axis=1)
    predicted_fg = fg_votes * 2 > ov.pred_size
    tp_fg = float(fg_votes[predicted_fg].sum())
    pred_fg = float(ov.pred_size[predicted_fg].sum())
    true_fg = float(ov.gt_size.sum())
    total = float(ov.table.sum())
    tp_bg = total - pred_fg - true_fg + tp_fg
    ious = []
    for tp, pred_n, true_n in ((tp_fg, pred_fg, true_fg), (tp_bg, total - pred_fg, total - true_fg)):
        union = pred_n + true_n - tp
        if union > 0:
            ious.append(tp / union)
    sq = float(np.mean(ious)) if ious else 1.0
    return float(np.sqrt(aq * sq)), aq, sq


def _supervoxel(ov: _Overlap) -> tuple[float, float, float]:
    """Purity, mean best overlap and under-segmentation error (Neubert & Protzel's form, which a stray
    boundary pixel cannot blow up: for every true segment a predicted region overlaps, the region costs
    the smaller of its parts inside and outside that segment)."""
    regions = ov.table[1:]  # background column included: leaking into it is impure
    labeled = float(regions.sum())
    if labeled == 0:
        return 0.0, 0.0, 0.0
    purity = float(regions.max(axis=1).sum()) / labeled
    iou = ov.iou()
    best = float(iou.max(axis=0).mean()) if iou.size else (1.0 if not len(ov.gt_ids) else 0.0)
    sizes = ov.pred_size[:, None]
    under = float(np.minimum(regions, sizes - regions).sum()) / labeled
    return purity, best, under


def evaluate_segmentation(pred: np.ndarray, gt: np.ndarray) -> SegmentationScores:
    """All scores of one clip. `pred` and `gt` are (T, H, W) id maps of the same shape (see module doc)."""
    ov = _overlap(pred, gt)
    veq, veq_sq, veq_rq = _veq(ov)
    stq, stq_aq, stq_sq = _stq(ov)
    purity, best, under = _supervoxel(ov)
    t = pred.shape[0]
    duration = _mean_duration(pred)
    return SegmentationScores(
        veq=veq,
        veq_sq=veq_sq,
        veq_rq=veq_rq,
        stq=stq,
        stq_aq=stq_aq,
        stq_sq=stq_sq,
        purity=purity,
        mean_best_overlap=best,
        undersegmentation_error=under,
        mean_duration=duration,
        duration_fraction=duration / t if t else 0.0,
        num_trajectories=len(ov.pred_ids),
        num_objects=len(ov.gt_ids),
    )


def _mean_duration(labels: np.ndarray) -> float:
    """Mean number of frames each non-zero id appears in."""
    present = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    for frame in labels:
        present[np.unique(frame)] += 1
    counts = present[1:][present[1:] > 0]
    return float(counts.mean()) if counts.size else 0.0


def mean_scores(scores: list[SegmentationScores]) -> dict[str, float]:
    """Average of each score over clips (the benchmark and evaluation report this)."""
    if not scores:
        raise ValueError("no scores to average")
    return {f.name: float(np.mean([getattr(s, f.name) for s in scores])) for f in fields(SegmentationScores)}
