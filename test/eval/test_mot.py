"""The trackeval wrapper reproduces hand-computed HOTA / MOTA / IDF1 on tiny scenes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ba_perception.eval.mot import MotEvalError, MotFrame, evaluate_mot, similarity_3d

FAR = np.array([100.0, 100.0, 0.0])


def _frame(gt: dict[int, tuple], pred: dict[int, tuple], label: str = "car") -> MotFrame:
    return MotFrame(
        gt_ids=np.array(list(gt), dtype=int),
        gt_labels=[label] * len(gt),
        gt_centers=np.array(list(gt.values()), dtype=float).reshape(-1, 3),
        pred_ids=np.array(list(pred), dtype=int),
        pred_labels=[label] * len(pred),
        pred_centers=np.array(list(pred.values()), dtype=float).reshape(-1, 3),
    )


def _switch_scene() -> list[MotFrame]:
    """Two GT objects over 4 frames.

    GT 1 at (0,0,0): tracked by id 10 in frames 0-1, then by id 11 in frames 2-3 (one ID switch).
    GT 2 at (10,0,0): tracked by id 20 in frames 0-2, missed in frame 3 (one FN).
    Frame 3 also has a false positive, id 30, far from everything (one FP).
    Predictions sit exactly on the GT centres, so similarity is exactly 1 or 0 and HOTA is the
    same at every alpha.
    """
    g1, g2 = (0.0, 0.0, 0.0), (10.0, 0.0, 0.0)
    return [
        _frame({1: g1, 2: g2}, {10: g1, 20: g2}),
        _frame({1: g1, 2: g2}, {10: g1, 20: g2}),
        _frame({1: g1, 2: g2}, {11: g1, 20: g2}),
        _frame({1: g1, 2: g2}, {11: g1, 30: tuple(FAR)}),
    ]


def test_hand_computed_hota_mota_idf1():
    r = evaluate_mot(_switch_scene(), similarity="3d")["car"]
    # Detection: TP = 4 (GT1) + 3 (GT2) = 7, FN = 1, FP = 1.
    assert (r["TP"], r["FN"], r["FP"], r["IDSW"]) == (7, 1, 1, 1)
    # DetA = TP / (TP + FN + FP) = 7/9.
    assert r["DetA"] == pytest.approx(7 / 9, abs=1e-12)
    # AssA = mean over TPs of TPA / (TPA + FNA + FPA):
    #   (GT1, 10): 2 TPs, TPA=2, FNA=4-2=2, FPA=2-2=0 -> 1/2
    #   (GT1, 11): 2 TPs, same                          -> 1/2
    #   (GT2, 20): 3 TPs, TPA=3, FNA=4-3=1, FPA=3-3=0   -> 3/4
    #   AssA = (2*1/2 + 2*1/2 + 3*3/4) / 7 = 17/28
    assert r["AssA"] == pytest.approx(17 / 28, abs=1e-12)
    # HOTA = sqrt(DetA * AssA) = sqrt(7/9 * 17/28) = sqrt(17)/6
    assert r["HOTA"] == pytest.approx(math.sqrt(17) / 6, abs=1e-12)
    # MOTA = 1 - (FN + FP + IDSW) / num_gt = 1 - 3/8
    assert r["MOTA"] == pytest.approx(5 / 8, abs=1e-12)
    # IDF1: best id mapping GT1->10 (2), GT2->20 (3): IDTP=5, IDFN=8-5=3, IDFP=8-5=3,
    # IDF1 = 2*IDTP / (2*IDTP + IDFN + IDFP) = 10/16
    assert r["IDTP"] == 5
    assert r["IDF1"] == pytest.approx(10 / 16, abs=1e-12)
    assert r["MOTP"] == pytest.approx(1.0)


def test_perfect_tracking_scores_one_and_classes_are_separate():
    g1, g2 = (0.0, 0.0, 0.0), (3.0, 0.0, 0.0)
    frames = []
    for _ in range(3):
        fr = _frame({1: g1}, {7: g1}, "car")
        ped = _frame({2: g2}, {8: g2}, "pedestrian")
        frames.append(MotFrame(
            gt_ids=np.r_[fr.gt_ids, ped.gt_ids], gt_labels=["car", "pedestrian"],
            gt_centers=np.r_[fr.gt_centers, ped.gt_centers],
            pred_ids=np.r_[fr.pred_ids, ped.pred_ids], pred_labels=["car", "pedestrian"],
            pred_centers=np.r_[fr.pred_centers, ped.pred_centers],
        ))
    res = evaluate_mot(frames)
    for key in ("car", "pedestrian", "all", "cls_avg"):
        assert res[key]["HOTA"] == pytest.approx(1.0)
        assert res[key]["MOTA"] == pytest.approx(1.0)
        assert res[key]["IDF1"] == pytest.approx(1.0)
    # Swap the prediction labels only: each track sits exactly on an object of the other
    # class, which is not a match, so nothing is detected in any class.
    for fr in frames:
        fr.pred_labels = ["pedestrian", "car"]
    res = evaluate_mot(frames)
    assert res["all"]["TP"] == 0 and res["all"]["FP"] == 6 and res["all"]["FN"] == 6
    assert res["car"]["TP"] == 0 and res["cls_avg"]["HOTA"] == 0.0


def test_2d_iou_similarity_and_multiple_sequences():
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    shifted = np.array([[0.0, 0.0, 10.0, 5.0]])  # IoU 0.5 with box
    seq_a = [MotFrame(np.array([1]), ["car"], np.array([5]), ["car"], gt_boxes_2d=box, pred_boxes_2d=box)] * 2
    seq_b = [MotFrame(np.array([1]), ["car"], np.array([5]), ["car"], gt_boxes_2d=box, pred_boxes_2d=shifted)] * 2
    r = evaluate_mot({"a": seq_a, "b": seq_b}, similarity="2d")["car"]
    assert r["TP"] == 4 and r["IDSW"] == 0
    # MOTP is the mean similarity of CLEAR matches: (1 + 1 + 0.5 + 0.5) / 4.
    assert r["MOTP"] == pytest.approx(0.75)
    with pytest.raises(MotEvalError):
        evaluate_mot(seq_a, similarity="3d")


def test_similarity_3d_is_linear_in_distance():
    s = similarity_3d(np.zeros((1, 3)), np.array([[0.5, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]), max_dist_m=2.0)
    np.testing.assert_allclose(s, [[0.75, 0.5, 0.0]])
