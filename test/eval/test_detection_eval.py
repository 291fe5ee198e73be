"""eval-det plumbing: a forward that outputs the encoded ground truth scores AP 100 on the cached split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import numpy as np

from ba_perception.core.detection.decode import encode_objects
from ba_perception.core.detection.model import NUM_REG
from ba_perception.eval.detection_ap import FrameBoxes
from ba_perception.eval.detection_eval import (
    centre_cells,
    crowded_fraction,
    diagnosis_rows,
    evaluate_on_split,
    summary_rows,
)
from ba_perception.train.data import TrainObjectFilter, frame_targets

_spec = importlib.util.spec_from_file_location(
    "_train_fixture", Path(__file__).resolve().parents[1] / "train" / "test_detector_training.py")
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)


def _perfect_forward(split):
    """A network that outputs frame 0's encoded ground truth, and the mirrored world's for the
    mirrored image (what test-time flip feeds it)."""
    split.images[0, 0, 0] = 255 - split.images[0, 0, -1]  # the fixture image is symmetric; this tells the mirror apart
    image = torch.from_numpy(split.images[[0]]).permute(0, 3, 1, 2).float() / 255.0
    outs = {}
    for flip in (False, True):
        t = frame_targets(split, 0, flip, TrainObjectFilter())
        h, w = t["heatmap"].shape[1:]
        reg = torch.zeros(1, NUM_REG, h * w)
        reg[0, :, t["ind"]] = t["reg"].t()
        outs[flip] = {"heatmap": t["heatmap"][None] * 0.9, "regression": reg.view(1, NUM_REG, h, w),
                      "embedding": torch.ones(1, 4, h, w), "features": torch.ones(1, 4, 2 * h, 2 * w)}

    def forward(x):
        assert x.shape == (1, 3, 192, 640)
        return outs[torch.equal(x, image.flip(-1))]

    return forward


def test_diagnosis_of_perfect_outputs_and_centre_cells_match_the_targets():
    split = _fixture._split()
    res = evaluate_on_split(_perfect_forward(split), split, batch_size=1, diagnosis=True)
    d = res["diagnosis"]
    assert [r["gt_fields"] for r in d["oracle"]][:2] == [[], ["size"]]
    assert all(r["3d@0.7"] == 100.0 for r in d["oracle"])
    assert d["bounds"]["best_iou_2d_at_least"]["0.8"] == 1.0 and d["crowded_fraction"] == 0.0
    assert any(k.startswith("car oracle GT depth") for k, _ in diagnosis_rows(d))
    enc = encode_objects(torch.from_numpy(split.obj_label), torch.from_numpy(split.obj_center),
                         torch.from_numpy(split.obj_size), torch.from_numpy(split.obj_yaw), torch.from_numpy(split.obj_box),
                         torch.from_numpy(split.K_src[0]), split.preprocess, (24, 80))
    np.testing.assert_array_equal(centre_cells(split, 0), enc.cell_xy.numpy())


def test_crowded_fraction_counts_valid_gt_with_a_neighbour_centre_cell():
    n = 4
    gt = FrameBoxes(labels=np.array(["car"] * n, dtype=object), box_2d=np.array([[0, 0, 50, 50]] * n, float),
                    center_cam=np.tile([0.0, 1.0, 10.0], (n, 1)), size_lwh=np.tile([4.0, 1.8, 1.5], (n, 1)),
                    yaw=np.zeros(n), occlusion=np.array([0.0, 0.0, 0.0, 0.9]))
    # valid cars at (10,5), (11,6) (neighbours), (20,5) (alone); the occluded car at (20,7) is 2 rows away
    cells = np.array([[10, 5], [11, 6], [20, 5], [20, 7]], float)
    assert crowded_fraction([(gt, gt)], [cells]) == 2 / 3
    cells[3] = [21, 6]  # an ignored object still occupies its cell
    assert crowded_fraction([(gt, gt)], [cells]) == 1.0


def test_perfect_outputs_score_full_ap_and_zero_errors():
    split = _fixture._split()
    forward = _perfect_forward(split)
    res = evaluate_on_split(forward, split, batch_size=1)
    car = res["classes"]["car"]
    # The 95 %-occluded car is outside "moderate": ignored, so the one valid car is found with AP 100.
    assert car["num_gt"] == 1 and car["ap3d_r40@0.7"] == 100.0 and car["ap2d_r40@0.7"] == 100.0
    assert res["classes"]["pedestrian"]["ap3d_r40@0.5"] == 100.0
    assert car["errors"]["depth_abs_median_m"] < 1e-3
    assert any("car ap3d_r40@0.7" == k and v == "100.0" for k, v in summary_rows(res))


def _cars(z, box_h=60.0, scores=None):
    n = len(z)
    boxes = np.array([[100.0 * i, 100.0, 100.0 * i + 80.0, 100.0 + box_h] for i in range(n)])
    return FrameBoxes(labels=np.array(["car"] * n, dtype=object), box_2d=boxes,
                      center_cam=np.stack([np.zeros(n), np.ones(n), np.asarray(z, float)], 1),
                      size_lwh=np.tile([4.0, 1.8, 1.5], (n, 1)), yaw=np.zeros(n), scores=scores if scores is not None else [])


def test_rig_metrics_recall_by_range_and_signed_depth_error():
    from ba_perception.eval.detection_ap import rig_metrics

    gt = _cars([10.0, 30.0, 45.0, 55.0])
    # detections on the first three cars, 10 % too far; the 45-m one scores below the threshold
    det = _cars([11.0, 33.0, 49.5], scores=np.array([0.9, 0.8, 0.05]))
    m = rig_metrics([(gt, det)], score_threshold=0.08)
    assert m["recall"]["0-40"] == {"share": 1.0, "count": 2}
    assert m["recall"]["40-60"] == {"share": 0.0, "count": 2}
    assert m["matched"] == 2
    assert m["depth_rel_signed_median"] == pytest.approx(0.1) and m["depth_rel_abs_median"] == pytest.approx(0.1)
    near = _cars([11.0, 27.0], scores=np.array([0.9, 0.8]))
    assert rig_metrics([(gt, near)], score_threshold=0.08)["depth_rel_signed_median"] == pytest.approx(0.0)


def test_evaluate_world_reports_every_split_and_rig_with_both_preprocessings():
    from ba_perception.core.detection.decode import DecodeConfig
    from ba_perception.data.synth import plan
    from ba_perception.data.world import WorldConfig
    from ba_perception.eval.detection_eval import evaluate_world, rig_table

    shapes = []

    def forward(x):  # an empty network: no detections anywhere
        shapes.append(tuple(x.shape))
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        return {"heatmap": torch.zeros(1, 3, h, w), "regression": torch.zeros(1, NUM_REG, h, w),
                "embedding": torch.ones(1, 4, h, w), "features": torch.ones(1, 4, 2 * h, 2 * w)}

    splits = {"test": plan("test", ["urban"], 1, 1, WorldConfig(), rigs=True), "test_cross": plan("test_cross", ["urban"], 1, 1, WorldConfig(), rigs=True)}
    res = evaluate_world(forward, (192, 640), splits, 1, 1, DecodeConfig(flip_test=False), ("letterbox", "horizon_band"),
                         progress=False)
    assert set(shapes) == {(1, 3, 192, 640)} and len(shapes) == 4
    for mode in ("letterbox", "horizon_band"):
        assert set(res[mode]) == {"test", "test_cross"}
        assert set(res[mode]["test"]) == {splits["test"][0].rig, "all"}
        assert set(res[mode]["test_cross"]) == {splits["test_cross"][0].rig, "all"}
        assert res[mode]["test"]["all"]["matched"] == 0
        assert len(rig_table(res, mode)) == 5
