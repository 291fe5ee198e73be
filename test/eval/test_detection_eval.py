"""eval-det plumbing: a forward that outputs the encoded ground truth scores AP 100 on the cached split."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ba_perception.core.detection.model import NUM_REG
from ba_perception.eval.detection_eval import evaluate_on_split, summary_rows
from ba_perception.train.data import TrainObjectFilter, frame_targets

_spec = importlib.util.spec_from_file_location(
    "_train_fixture", Path(__file__).resolve().parents[1] / "train" / "test_detector_training.py")
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)


def test_perfect_outputs_score_full_ap_and_zero_errors():
    split = _fixture._split()
    t = frame_targets(split, 0, False, TrainObjectFilter())
    h, w = t["heatmap"].shape[1:]
    reg = torch.zeros(1, NUM_REG, h * w)
    reg[0, :, t["ind"]] = t["reg"].t()

    def forward(x):
        assert x.shape == (1, 3, 192, 640)
        return {"heatmap": t["heatmap"][None] * 0.9, "regression": reg.view(1, NUM_REG, h, w),
                "embedding": torch.ones(1, 4, h, w), "features": torch.ones(1, 4, 2 * h, 2 * w)}

    res = evaluate_on_split(forward, split, batch_size=1)
    car = res["classes"]["car"]
    # The 95 %-occluded car is outside "moderate": ignored, so the one valid car is found with AP 100.
    assert car["num_gt"] == 1 and car["ap3d_r40@0.7"] == 100.0 and car["ap2d_r40@0.7"] == 100.0
    assert res["classes"]["pedestrian"]["ap3d_r40@0.5"] == 100.0
    assert car["errors"]["depth_abs_median_m"] < 1e-3
    assert any("car ap3d_r40@0.7" == k and v == "100.0" for k, v in summary_rows(res))
