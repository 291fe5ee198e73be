"""The shipped detector (models/detector.onnx) finds near, unoccluded cars of world frames it never saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ba_perception.core.detection.backends import create_backend, read_onnx_metadata
from ba_perception.core.detection.detector import Detector
from ba_perception.eval.detection_ap import iou_2d

MODEL = Path(__file__).resolve().parents[2] / "models" / "detector.onnx"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="models/detector.onnx not shipped")


def test_shipped_model_metadata_and_size():
    meta = read_onnx_metadata(MODEL)
    assert meta["config"]["input_hw"] == [192, 640]
    assert MODEL.stat().st_size < 25e6


@pytest.mark.parametrize("preset,seed", [("highway", 100000), ("urban", 100001), ("parking_lot", 100002)])
def test_near_unoccluded_cars_are_detected_in_3d(preset, seed):
    # World val seeds (100000+): disjoint from the detector's training sequences (10000+).
    from ba_perception.data.world import World, WorldConfig

    with World(WorldConfig(preset=preset, seed=seed, n_frames=5)) as world:
        frame = world.render(4)
    det = Detector(create_backend("onnxruntime", onnx_path=MODEL, threads=1))
    res = det.detect(frame.image, frame.K)
    d, g = res.detections, frame.objects
    box = g.box_full
    near = ((np.array(g.class_label) == "car") & (g.occlusion < 0.2) & (g.truncation < 0.1)
            & (g.center_cam[:, 2] < 30) & np.isfinite(box).all(1))
    idx = np.nonzero(near)[0]
    assert len(idx) >= 1
    iou = iou_2d(box[idx], d.box_2d.double().numpy())
    assert iou.shape[1] > 0
    best = iou.argmax(1)
    for k, i in enumerate(idx):
        j = best[k]
        z = g.center_cam[i, 2]
        assert iou[k, j] >= 0.5, f"car at z={z:.1f} m: best 2D IoU {iou[k, j]:.2f}"
        assert res.class_names[j] == "car"
        # tolerances: depth within 10 % of range, lateral within 0.5 m
        assert abs(d.center_cam[j, 2].item() - z) <= 0.1 * z
        assert abs(d.center_cam[j, 0].item() - g.center_cam[i, 0]) <= 0.5
