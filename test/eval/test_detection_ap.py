"""AP|R40, rotated IoU and error metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ba_perception.eval.detection_ap import (
    DetectionEvalError,
    FrameBoxes,
    average_precision_r40,
    convex_intersection_area,
    depth_yaw_errors,
    evaluate_ap,
    evaluate_all,
    iou_3d,
    iou_bev,
    localisation_bounds,
    substitute_ground_truth,
)


def boxes(centers, sizes, yaws, labels=None, scores=None, box2d=None, occ=None):
    n = len(centers)
    return FrameBoxes(
        labels=np.array(labels or ["car"] * n, dtype=object),
        box_2d=np.array(box2d if box2d is not None else [[0, 0, 100, 100]] * n, dtype=float),
        center_cam=np.array(centers, dtype=float),
        size_lwh=np.array(sizes, dtype=float),
        yaw=np.array(yaws, dtype=float),
        scores=np.array(scores if scores is not None else [1.0] * n),
        occlusion=np.array(occ if occ is not None else [0.0] * n),
    )


def test_axis_aligned_bev_and_3d_iou():
    a = boxes([[0, 0, 10]], [[4, 2, 1.5]], [0.0])
    b = boxes([[1, 0.5, 10]], [[4, 2, 1.5]], [0.0])
    # footprints x in [-2, 2] vs [-1, 3], z in [9, 11]: inter 3*2 = 6, union 10
    assert iou_bev(a, b)[0, 0] == pytest.approx(0.6)
    # heights overlap 1.0 of 1.5: inter 6, union 12 + 12 - 6
    assert iou_3d(a, b)[0, 0] == pytest.approx(1 / 3)


def test_rotated_square_gives_octagon():
    a = boxes([[0, 0, 10]], [[2, 2, 1]], [0.0])
    b = boxes([[0, 0, 10]], [[2, 2, 1]], [math.pi / 4])
    octagon = 8 * (math.sqrt(2) - 1)
    assert iou_bev(a, b)[0, 0] == pytest.approx(octagon / (8 - octagon), rel=1e-9)


def test_yaw_pi_is_the_same_box_and_far_boxes_do_not_overlap():
    a = boxes([[3, 1, 20], [50, 1, 20]], [[4, 1.8, 1.5], [4, 1.8, 1.5]], [0.3, 0.0])
    b = boxes([[3, 1, 20]], [[4, 1.8, 1.5]], [0.3 + math.pi])
    iou = iou_3d(a, b)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[1, 0] == 0.0


def test_convex_intersection_of_disjoint_and_contained():
    sq = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)
    assert convex_intersection_area(sq, sq + 5) == 0.0
    assert convex_intersection_area(sq, sq * 0.5 + 0.5) == pytest.approx(1.0)
    assert convex_intersection_area(sq[::-1], sq + [1, 1]) == pytest.approx(1.0)  # clockwise input


def test_ap_r40_hand_computed():
    # TP (0.9), FP (0.8), TP (0.7) with 2 GT: precision 1 up to recall 0.5, then 2/3 up to recall 1.
    ap = average_precision_r40([(0.9, True), (0.8, False), (0.7, True)], 2)
    assert ap == pytest.approx(100 * (20 * 1 + 20 * 2 / 3) / 40)
    assert average_precision_r40([(0.5, True)], 2) == pytest.approx(50.0)
    assert math.isnan(average_precision_r40([], 0))


def test_evaluate_ap_matching_ignoring_and_thresholds():
    gt = boxes([[0, 1, 10], [5, 1, 30], [-5, 1, 15]], [[4, 1.8, 1.5]] * 3, [0.0, 0.0, 0.0],
               box2d=[[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], occ=[0.0, 0.0, 0.95])
    det = boxes(
        [[0, 1, 10], [5.3, 1, 30.5], [-5, 1, 15], [0, 1, 50]],
        [[4, 1.8, 1.5]] * 4,
        [0.0] * 4,
        scores=[0.9, 0.8, 0.7, 0.6],
        box2d=[[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100], [600, 0, 700, 100]],
    )
    # det 1 vs gt 1: BEV overlap (4-0.3)*(1.8-0.5)=4.81 / (14.4-4.81) = 0.5016 -> 3D the same (same height)
    iou = iou_3d(det, gt)[1, 1]
    assert iou == pytest.approx(4.81 / (14.4 - 4.81))
    # At IoU 0.7: TP, FP, ignored (gt heavily occluded), FP -> 1 TP of 2 valid GT, precision 1 at recall 0.5.
    assert evaluate_ap([(gt, det)], "car", 0.7, "3d") == pytest.approx(50.0)
    # At 0.5 det 1 is a TP too; the trailing FP does not lower interpolated precision -> 100.
    assert evaluate_ap([(gt, det)], "car", 0.5, "3d") == pytest.approx(100.0)
    assert evaluate_ap([(gt, det)], "car", 0.7, "2d") == pytest.approx(100.0)
    # Other class: no GT -> NaN
    assert math.isnan(evaluate_ap([(gt, det)], "pedestrian", 0.5, "3d"))


def test_depth_and_yaw_errors():
    gt = boxes([[0, 1, 20], [0, 1, 50]], [[4, 1.8, 1.5]] * 2, [0.0, 1.0], box2d=[[0, 0, 100, 100], [200, 0, 300, 100]])
    det = boxes([[0, 1, 21], [0, 1, 45]], [[4, 1.8, 1.5]] * 2, [0.1, 1.0 + math.pi - 0.2],
                box2d=[[0, 0, 100, 100], [200, 0, 300, 100]], scores=[0.9, 0.8])
    e = depth_yaw_errors([(gt, det)], "car")
    assert e["matched"] == 2
    assert e["within_40m"]["depth_rel_median"] == pytest.approx(0.05)
    assert e["depth_abs_median_m"] == pytest.approx(3.0)
    assert e["bins"][1]["count"] == 1 and e["bins"][2]["count"] == 1
    assert e["yaw_abs_median_deg"] == pytest.approx(math.degrees((0.1 + (math.pi - 0.2)) / 2))
    res = evaluate_all([(gt, det)])
    assert set(res["classes"]) == {"car", "pedestrian", "cyclist"}
    assert "ap3d_r40@0.7" in res["classes"]["car"] and "ap2d_r40@0.7" in res["classes"]["car"]


def test_substitute_ground_truth_fixes_only_the_named_quantities_of_matched_detections():
    gt = boxes([[0, 1, 10]], [[4, 1.8, 1.5]], [0.0], box2d=[[0, 0, 100, 100]])
    # det 0: on the GT's ray 10 % too far, 0.3 rad off, 10 % too long; det 1: elsewhere in the image (unmatched)
    det = boxes([[0, 1.1, 11], [5, 1, 30]], [[4.4, 1.8, 1.5], [4, 1.8, 1.5]], [0.3, 0.5],
                box2d=[[0, 0, 100, 100], [500, 0, 600, 100]], scores=[0.9, 0.8])
    assert evaluate_ap([(gt, det)], "car", 0.7, "3d") == 0.0
    ((_, d),) = substitute_ground_truth([(gt, det)], "car", ("depth",))
    np.testing.assert_allclose(d.center_cam[0], [0, 1, 10])  # moved along its ray to z = 10
    assert d.yaw[0] == 0.3 and d.size_lwh[0, 0] == 4.4
    np.testing.assert_array_equal(d.center_cam[1], det.center_cam[1])
    ((_, d),) = substitute_ground_truth([(gt, det)], "car", ("depth", "yaw", "size"))
    assert d.yaw[0] == 0.0 and d.size_lwh[0, 0] == 4.0 and d.yaw[1] == 0.5
    # the matched detection becomes exact: TP at 0.7, the other one an FP below it -> AP 100
    assert evaluate_ap([(gt, d)], "car", 0.7, "3d") == pytest.approx(100.0)
    assert det.yaw[0] == 0.3  # input untouched
    with pytest.raises(DetectionEvalError):
        substitute_ground_truth([(gt, det)], "car", ("colour",))


def test_localisation_bounds_hand_computed():
    gt = boxes([[0, 1, 10], [5, 1, 20], [9, 1, 30]], [[4, 1.8, 1.5]] * 3, [0.0, 0.0, 0.0],
               box2d=[[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], occ=[0.0, 0.0, 0.95])
    # det 0 on GT 0 with 2D IoU 0.75, 1 m too far, 0.3 rad (17 deg) off; GT 1 missed; GT 2 ignored (occluded)
    det = boxes([[0, 1, 11]], [[4, 1.8, 1.5]], [0.3], box2d=[[0, 0, 100, 75]])
    b = localisation_bounds([(gt, det)], "car")
    assert b["valid_gt"] == 2 and b["ignored_gt"] == 1 and b["matched"] == 1
    assert b["best_iou_2d_at_least"] == {"0.5": 0.5, "0.7": 0.5, "0.8": 0.0}
    assert b["best_iou_2d_median"] == pytest.approx(0.375)
    assert b["depth_rel_median"] == pytest.approx(0.1) and b["depth_abs_median_m"] == pytest.approx(1.0)
    assert b["depth_abs_below_m"] == {"0.7": 0.0, "1.3": 1.0}
    assert b["yaw_abs_fraction"]["10-30"] == 1.0 and b["yaw_abs_fraction"][">150"] == 0.0
