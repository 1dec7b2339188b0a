"""Segmentation metrics on hand-built maps whose scores can be worked out on paper."""

from __future__ import annotations

import numpy as np
import pytest

from trajtok.eval.segmentation import evaluate_segmentation, mean_scores


def _scene() -> np.ndarray:
    """4 frames of 10x10: background 0, object 1 (rows 0-4, 50 px/frame), object 2 (rows 6-9, cols 0-4)."""
    gt = np.zeros((4, 10, 10), np.uint16)
    gt[:, 0:5, :] = 1
    gt[:, 6:10, 0:5] = 2
    return gt


def test_perfect_prediction_scores_one():
    gt = _scene()
    s = evaluate_segmentation(gt.copy(), gt)
    assert (s.veq, s.stq, s.purity, s.mean_best_overlap) == (1.0, 1.0, 1.0, 1.0)
    assert s.undersegmentation_error == 0.0
    assert (s.num_trajectories, s.num_objects, s.mean_duration, s.duration_fraction) == (2, 2, 4.0, 1.0)


def test_permuted_ids_and_labelled_background_score_one():
    gt = _scene()
    pred = np.choose(gt, [7, 300, 5]).astype(np.uint16)  # background becomes a trajectory of its own
    s = evaluate_segmentation(pred, gt)
    assert (s.veq, s.stq, s.purity, s.mean_best_overlap) == (1.0, 1.0, 1.0, 1.0)
    assert s.undersegmentation_error == 0.0
    assert s.num_trajectories == 3


def test_split_object():
    gt = np.zeros((1, 10, 10), np.uint16)
    gt[0, :, :] = 1
    pred = gt.copy()
    pred[0, :, 7:] = 2  # 70 / 30 split
    s = evaluate_segmentation(pred, gt)
    assert s.purity == 1.0 and s.undersegmentation_error == 0.0
    assert s.mean_best_overlap == pytest.approx(0.7)
    assert s.veq_sq == pytest.approx(0.7) and s.veq_rq == pytest.approx(1 / 1.5)  # the 30 part is a FP
    assert s.stq_aq == pytest.approx(0.7 * 0.7 + 0.3 * 0.3)
    assert s.stq == pytest.approx(np.sqrt(0.58))


def test_merged_objects():
    gt = np.zeros((1, 10, 10), np.uint16)
    gt[0, :6, :] = 1
    gt[0, 6:, :] = 2
    pred = np.ones_like(gt)  # one region over both: 60 + 40
    s = evaluate_segmentation(pred, gt)
    assert s.purity == pytest.approx(0.6)
    assert s.mean_best_overlap == pytest.approx((0.6 + 0.4) / 2)
    assert s.undersegmentation_error == pytest.approx((40 + 40) / 100)
    assert s.veq == pytest.approx(0.6 * (1 / 1.5))  # one TP at IoU 0.6, one FN
    assert s.stq_aq == pytest.approx(0.5)


def test_leak_into_background_is_impure():
    gt = np.zeros((1, 10, 10), np.uint16)
    gt[0, :, :5] = 1
    pred = np.zeros_like(gt)
    pred[0, :, :8] = 1  # 50 object + 30 background
    pred[0, :, 8:] = 2
    s = evaluate_segmentation(pred, gt)
    assert s.purity == pytest.approx((50 + 20) / 100)
    assert s.undersegmentation_error == pytest.approx((30 + 30) / 100)  # charged on both sides
    assert s.mean_best_overlap == pytest.approx(50 / 80)
    assert s.stq_sq == pytest.approx((50 / 80 + 20 / 50) / 2)  # region 1 counts as foreground


def test_identity_switch_halves_duration_and_association():
    gt = np.ones((4, 5, 5), np.uint16)
    pred = gt.copy()
    pred[2:] = 2
    s = evaluate_segmentation(pred, gt)
    assert s.purity == 1.0
    assert s.mean_duration == 2.0 and s.duration_fraction == 0.5
    assert s.mean_best_overlap == pytest.approx(0.5)
    assert s.stq_aq == pytest.approx(0.5)
    assert s.veq == pytest.approx(0.5 / 1.5)  # IoU 0.5 still matches; the other half is a FP


def test_unlabeled_prediction_misses_objects():
    gt = _scene()
    s = evaluate_segmentation(np.zeros_like(gt), gt)
    assert s.veq == 0.0 and s.stq == 0.0 and s.num_trajectories == 0


def test_mean_scores_and_shape_check():
    gt = _scene()
    a = evaluate_segmentation(gt, gt)
    b = evaluate_segmentation(np.ones_like(gt), gt)
    avg = mean_scores([a, b])
    assert avg["purity"] == pytest.approx((1.0 + b.purity) / 2)
    with pytest.raises(ValueError, match="same"):
        evaluate_segmentation(gt[:2], gt)
