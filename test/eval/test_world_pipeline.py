"""World-split evaluation plumbing: GT matching, oracle samples, camera->odom tracker input, eval-track on KITTI files."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from ba_perception.cli import main
from ba_perception.core.tracking import Detections
from ba_perception.eval.world_pipeline import match_to_gt


def _gt(boxes, labels):
    return SimpleNamespace(box_full=np.array(boxes, float), class_label=labels)


def test_match_to_gt_is_one_to_one_by_iou_and_class():
    gt = _gt([[0, 0, 10, 10], [20, 0, 30, 10], [np.nan] * 4], ["car", "car", "car"])
    det = np.array([[0, 0, 10, 11], [1, 0, 11, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    m = match_to_gt(det, ["car", "car", "pedestrian", "car"], gt)
    # the better of two overlapping detections wins; a wrong class or no overlap stays unmatched
    assert m.tolist() == [0, -1, -1, -1]
    assert match_to_gt(np.zeros((0, 4)), [], gt).tolist() == []


def test_detections_from_camera_moves_boxes_and_ray_covariance_to_odom():
    # camera optical frame in odom: z forward -> odom x, x right -> odom -y, y down -> odom -z; 2 m up
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    T[:3, 3] = [5.0, 0.0, 2.0]
    d = Detections.from_camera(T, np.array([[0.0, 1.0, 10.0]]), np.array([0.0]), np.array([2.0]), np.array([0.1]),
                               np.array([[4.0, 1.8, 1.5]]), ["car"], np.array([0.9]), np.array([[0.0, 0, 10, 10]]), [np.zeros(0)])
    assert np.allclose(d.centers[0], [15.0, 0.0, 1.0])
    # KITTI rotation_y 0 = forward along camera +x = odom -y
    assert math.isclose(d.yaws[0], -math.pi / 2, abs_tol=1e-12)
    cov = d.covariances[0]
    # the viewing ray is odom +x (with a small tilt): depth variance along it, lateral across
    assert cov[0, 0] > 3.9 and math.isclose(cov[1, 1], 0.01, rel_tol=1e-6)
    assert len(Detections.from_camera(T, np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros((0, 3)), [],
                                   np.zeros(0), np.zeros((0, 4)), [])) == 0


def _kitti_line(frame, tid, x1, z):
    return f"{frame} {tid} Car 0 0 0.0 {x1} 100 {x1 + 50} 150 1.5 1.8 4.0 {x1 / 100:.2f} 1.6 {z} 0.0\n"


def test_eval_track_kitti_files_perfect_and_swapped(tmp_path):
    gt, good, bad = tmp_path / "gt", tmp_path / "good", tmp_path / "bad"
    for d in (gt, good, bad):
        d.mkdir()
    lines = "".join(_kitti_line(f, 1, 100, 10 + f) + _kitti_line(f, 2, 400, 20 + f) for f in range(10))
    (gt / "0000.txt").write_text(lines)
    (good / "0000.txt").write_text(lines.replace(" 1 Car", " 7 Car").replace(" 2 Car", " 9 Car"))
    # ids swap after frame 4: two ID switches
    swapped = "".join(_kitti_line(f, 1 if f < 5 else 2, 100, 10 + f) + _kitti_line(f, 2 if f < 5 else 1, 400, 20 + f) for f in range(10))
    (bad / "0000.txt").write_text(swapped)
    import json

    assert main(["eval-track", "--kitti-gt", str(gt), "--kitti-results", str(good), "--out", str(tmp_path / "g.json")]) == 0
    r = json.loads((tmp_path / "g.json").read_text())["results"]["kitti"]
    assert r["3d"]["car"]["HOTA"] == pytest.approx(1.0) and r["2d"]["car"]["IDSW"] == 0
    assert main(["eval-track", "--kitti-gt", str(gt), "--kitti-results", str(bad), "--out", str(tmp_path / "b.json")]) == 0
    r = json.loads((tmp_path / "b.json").read_text())["results"]["kitti"]
    assert r["3d"]["car"]["IDSW"] == 2 and r["3d"]["car"]["MOTA"] == pytest.approx(0.9)


def test_eval_track_kitti_bad_input_exits_with_one_line_reason(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "0003.txt").write_text(_kitti_line(0, 1, 100, 10))
    (tmp_path / "res").mkdir()
    assert main(["eval-track", "--kitti-gt", str(tmp_path / "gt"), "--kitti-results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0003.txt" in err[0]
    assert main(["eval-track", "--kitti-gt", str(tmp_path / "gt")]) == 2


@pytest.mark.slow
def test_eval_oba_and_eval_track_on_a_short_world_sequence(tmp_path, capsys):
    import json

    common = ["--presets", "urban", "--sequences", "1", "--frames", "12", "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main(["eval-oba", *common, "--variants", "single", "learned", "oracle", "static", "--min-frames", "3",
                 "--out", str(tmp_path / "oba.json")]) == 0
    first = capsys.readouterr().out
    assert "rendered + detected 12 frames" in first and "oracle" in first
    data = json.loads((tmp_path / "oba.json").read_text())
    res = data["results"]
    mq = data["learned_matches"]
    # learned matches on the same car mostly hit the same surface point (chance would be far lower)
    assert mq["matches"] > 20 and 0 <= mq["off_object_share"] <= 1 and mq["correct_share_on_object"] > 0.3
    assert set(res) == {"single", "learned", "oracle", "static"}
    assert res["single"]["depth"]["reduction"] == 0.0
    for name in ("learned", "oracle", "static"):
        assert res[name]["depth"]["count"] > 10 and 0 <= res[name]["ap3d_r40@0.5"] <= 100
        assert res[name]["refined_share"] > 0.5
        # the range bins partition the counted detections; the camera-travel bins partition the parked ones
        d = res[name]["depth"]
        assert sum(b["count"] for b in d["by_range"].values()) == d["count"]
        assert sum(b["count"] for b in d["parked_by_ego_travel"].values()) == d["parked"]["count"]
        ms = res[name]["motion_state"]  # the motion-state bins partition the parked and the moving cars
        assert sum(b["count"] for b in ms["parked_by_ego_travel"].values()) == ms["parked"]
        assert sum(b["count"] for b in ms["moving_by_speed"].values()) == ms["moving"]
    assert "parked, ego" in first and "z 0-20m" in first and "moving 1-2 m/s" in first
    dp = data["detector_depth_persistence"]
    assert dp["count"] > 10 and dp["pairs"] > 10 and -1 <= dp["lag1_correlation"] <= 1
    assert 0 < dp["ideal_average_abs_median_m"] and 0 < dp["single_abs_median_m"]
    # scene-level BA calls every car static; object BA does not
    assert res["static"]["motion_state"]["moving_correct"] in (0.0, None)
    # the second evaluation reuses the rendered + detected sequence
    assert main(["eval-track", *common, "--out", str(tmp_path / "trk.json"), "--write-kitti", str(tmp_path / "kitti")]) == 0
    second = capsys.readouterr().out
    assert "rendered" not in second
    rows = json.loads((tmp_path / "trk.json").read_text())["results"]
    assert set(rows) == {f"{m}+{u}" for m in ("hungarian_iou", "hungarian_3d", "graph") for u in ("ba", "none")}
    for r in rows.values():
        assert 0 < r["3d"]["all"]["HOTA"] <= 1 and r["2d"]["car"]["TP"] > 0
    assert (tmp_path / "kitti" / "graph+ba" / "urban_200000.txt").stat().st_size > 0
