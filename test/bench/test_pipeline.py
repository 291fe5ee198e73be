"""bench pipeline: the in-process stage chain runs, reports every stage, and its conversions match the nodes'."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ba_perception.bench.pipeline import STAGES, WorldObservations
from ba_perception.cli import main
from ba_perception.core.oba.refine import tracker_detections
from ba_perception.core.oba.tracklets import observations_from_detections


@pytest.fixture(scope="module")
def frames():
    from ba_perception.data.world import World, WorldConfig

    cfg = WorldConfig(preset="parking_lot", seed=1, width=620, height=188, n_frames=3)
    with World(cfg) as w:
        return [w.render(i) for i in range(3)]


def test_world_descriptors_follow_the_surface_point(frames):
    """Same object, consecutive frames: nearest-descriptor matches land on the same object-frame point."""
    obs = WorldObservations(max_objects=5, seed=0)
    a, b = obs(frames[0]), obs(frames[1])
    assert 1 <= len(a) <= 5 and len(a) == len(b)
    assert a[0].descriptors.shape == (25, 32) and a[0].sample_uv.shape == (25, 2) and a[0].embedding.shape == (64,)
    np.testing.assert_allclose(np.linalg.norm(a[0].descriptors, axis=1), 1.0, atol=1e-5)
    # nearest objects first; the same object keeps (nearly) the same embedding
    assert a[0].center_cam[2] <= a[-1].center_cam[2] + 3.0
    assert float(a[0].embedding @ b[0].embedding) > 0.8
    # a sample compared with itself re-rendered one frame later: identical point -> cosine ~1, others not
    sim = a[0].descriptors @ b[0].descriptors.T
    assert sim.max() > 0.9
    assert np.median(sim) < 0.5


def test_tracker_detections_drop_unknown_and_mark_bad_covariance():
    from ba_perception.core.oba.refine import RefinedBox

    def box(center, cov_diag):
        R = np.eye(3)
        return RefinedBox(tracklet_id=1, class_label="car", score=0.8, stamp_ns=0, box_2d=np.array([0, 0, 10, 10.0]),
                          embedding=np.ones(4, np.float32) / 2, refined=True, reason="", center_odom=np.asarray(center),
                          R_odom_obj=R, yaw_odom=0.0, center_cam=np.zeros(3), size_lwh=np.array([4.0, 1.8, 1.5]),
                          velocity_odom=np.zeros(3), pose_covariance=np.diag(cov_diag), velocity_covariance=-np.eye(3),
                          is_static=True, num_frames=3)

    d = tracker_detections([box([1, 2, 0], [0.1] * 6), box([np.nan, 0, 0], [0.1] * 6), box([5, 0, 0], [-1] * 6)])
    assert len(d) == 2
    np.testing.assert_allclose(d.centers, [[1, 2, 0], [5, 0, 0]])
    assert np.isfinite(d.covariances[0]).all() and np.isnan(d.covariances[1]).all()
    assert d.embeddings.shape == (2, 4)
    assert len(tracker_detections([])) == 0


def test_observations_from_detections_match_decode_output():
    from ba_perception.core.detection.backends import TorchBackend
    from ba_perception.core.detection.decode import DecodeConfig
    from ba_perception.core.detection.detector import Detector
    from ba_perception.core.detection.model import MonoDetector

    torch.manual_seed(0)
    det = Detector(TorchBackend(MonoDetector().eval(), device="cpu"), DecodeConfig(score_threshold=0.0, max_detections=7))
    K = np.array([[700.0, 0, 620], [0, 700.0, 187], [0, 0, 1]])
    res = det.detect(np.zeros((375, 1242, 3), np.uint8), K)
    obs = observations_from_detections(res.detections, res.class_names)
    assert len(obs) == 7
    for i, o in enumerate(obs):
        np.testing.assert_allclose(o.center_cam, res.detections.center_cam[i].double().numpy())
        assert np.linalg.det(o.R_cam_obj) == pytest.approx(1.0)
        assert o.descriptors.shape == tuple(res.detections.descriptors.shape[1:])
        assert o.class_label == res.class_names[i]  # one name per detection, not per class index
    from ba_perception.core.oba.tracklets import TrackletError

    with pytest.raises(TrackletError):
        observations_from_detections(res.detections, ["car", "pedestrian", "cyclist"])


@pytest.mark.slow  # ~14 s: renders 4 frames and runs the network + BA on each
def test_bench_pipeline_command_writes_every_stage(tmp_path):
    out = tmp_path / "pipeline.json"
    rc = main(["bench", "pipeline", "--frames", "3", "--warmup", "1", "--objects", "6", "--width", "620",
               "--height", "188", "--preset", "parking_lot", "--model", str(tmp_path / "none.onnx"), "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["weights"] == "random" and data["observations"] == "world" and data["device"] == "cpu"
    for stage in STAGES:
        assert data["stages"][stage]["n"] == 3, stage
    st = data["stages"]
    assert data["stages_cpu"]["total"]["n"] == 3 and data["stages_cpu"]["track_buffer"]["p50_ms"] > 0
    assert st["total"]["max_ms"] >= st["detector"]["p50_ms"]
    assert st["total"]["mean_ms"] >= st["track_buffer"]["mean_ms"]
    opf = data["objects_per_frame"]
    assert opf["observations"]["max"] == 6 and opf["tracker_input"]["max"] >= 1
    assert opf["refined"]["max"] >= 1  # linked over frames and solved


def test_bench_pipeline_rejects_cuda_without_gpu(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "pipeline", "--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
