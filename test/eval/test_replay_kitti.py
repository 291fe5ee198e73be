"""replay-eval on KITTI tracking sequences (as the world's exporter writes them) and honest drop accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ba_perception.data.bag import read_bag
from ba_perception.data.kitti import KittiWriter, occlusion_level, truncation_level
from ba_perception.data.kitti_bag import (DEFAULT_START_STAMP_NS, OCCLUSION_OF_LEVEL, TRUNCATION_OF_LEVEL,
                                          KittiBagError, check_sequence, kitti_to_bag)
from ba_perception.data.world import World, WorldConfig
from ba_perception.eval.replay import (bag_frame_stamps, extrinsics_from_bag, frame_accounting, input_stamp_map,
                                       remap_outputs)

CLI = [str(Path(sys.prefix) / "bin" / "ba-perception"), "replay-eval"]
ROOT = Path(__file__).resolve().parents[2]


def _export(root: Path, n: int, width: int, height: int, seed: int = 11) -> list:
    """Render ``n`` world frames and export them with KittiWriter as sequence 0000 under ``root``."""
    cfg = WorldConfig(preset="urban", seed=seed, width=width, height=height, n_frames=n)
    with World(cfg) as world, KittiWriter(root, seq=0) as kw:
        frames = [world.render(k) for k in range(n)]
        for f in frames:
            kw.write(f)
    return frames


@pytest.fixture(scope="module")
def small_sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    return root, _export(root, 20, 320, 96)


def test_bag_from_kitti_matches_the_world(small_sequence, tmp_path):
    root, world = small_sequence
    info = kitti_to_bag(root, "0000", tmp_path / "bag")
    assert (info.frames, info.width, info.height) == (20, 320, 96)
    back = list(read_bag(tmp_path / "bag", images=True))
    assert len(back) == 20
    assert [b.stamp_ns for b in back] == [DEFAULT_START_STAMP_NS + k * 100_000_000 for k in range(20)]  # 10 Hz
    T0 = np.linalg.inv(world[0].T_odom_base)
    n_objects = 0
    for f, b in zip(world, back):
        assert np.array_equal(b.image, f.image)
        assert np.allclose(b.K, f.K)
        assert np.allclose(b.T_base_cam, f.T_base_cam, atol=1e-9)  # from /tf_static (the calibration)
        assert np.allclose(b.T_odom_base, T0 @ f.T_odom_base, atol=1e-6)  # oxts -> odom, relative to frame 0
        assert np.allclose(b.velocity_base, f.velocity_base) and b.yaw_rate == pytest.approx(f.yaw_rate)
        g, h = f.objects, b.objects
        keep = np.isfinite(g.box_full).all(1)  # the exporter writes objects with a silhouette in the image
        assert len(h) == keep.sum()
        assert np.array_equal(h.track_id, g.track_id[keep])
        assert h.class_label == [c for c, k in zip(g.class_label, keep) if k]
        assert np.allclose(h.center_cam, g.center_cam[keep], atol=2e-6)
        assert np.allclose(h.center_odom, (T0[:3, :3] @ g.center_odom[keep].T).T + T0[:3, 3], atol=1e-5)
        assert np.allclose(h.size_lwh, g.size_lwh[keep], atol=2e-6)
        assert np.allclose(h.box_amodal, g.box_amodal[keep], atol=1e-3)
        # levels become fractions for the difficulty filters (float32 in the message)
        assert np.allclose(h.truncation, [TRUNCATION_OF_LEVEL[truncation_level(t)] for t in g.truncation[keep]], atol=1e-6)
        assert np.allclose(h.occlusion, [OCCLUSION_OF_LEVEL[occlusion_level(o)] for o in g.occlusion[keep]], atol=1e-6)
        n_objects += len(h)
    assert n_objects == info.objects > 20
    # camera_info carries K and the image size
    from rosbags.rosbag2 import Reader

    from ba_perception.data.bag import typestore

    with Reader(tmp_path / "bag") as r:
        conn = next(c for c in r.connections if c.topic == "/camera/camera_info")
        msg = typestore().deserialize_cdr(next(r.messages(connections=[conn]))[2], conn.msgtype)
    assert (msg.width, msg.height) == (320, 96) and np.allclose(np.reshape(msg.k, (3, 3)), world[0].K)
    # the replay hands the calibration's mounting to the nodes
    from ba_perception.ros.convert import extrinsics_to_matrix

    assert np.allclose(extrinsics_to_matrix(extrinsics_from_bag(tmp_path / "bag")), world[0].T_base_cam, atol=1e-9)


def test_invalid_sequences_are_refused_with_the_reason(small_sequence, tmp_path):
    src, _ = small_sequence
    import shutil

    root = tmp_path / "k"
    shutil.copytree(src, root)
    assert check_sequence(root, 0) == 20
    with pytest.raises(KittiBagError, match="missing image folder .*0007.*sequences there: 0000"):
        check_sequence(root, 7)
    (root / "image_02" / "0000" / "000019.png").unlink()
    with pytest.raises(KittiBagError, match="frame counts disagree: 19 images .* but 20 oxts lines"):
        check_sequence(root, 0)
    (root / "image_02" / "0000" / "000005.png").rename(root / "image_02" / "0000" / "000019.png")
    with pytest.raises(KittiBagError, match="without gaps"):
        check_sequence(root, 0)
    (root / "image_02" / "0000" / "000019.png").rename(root / "image_02" / "0000" / "000005.png")
    (root / "calib" / "0000.txt").unlink()
    with pytest.raises(KittiBagError, match="missing .*calib/0000.txt"):
        kitti_to_bag(root, 0, tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


def test_cli_reports_a_bad_kitti_sequence_in_one_line(small_sequence, tmp_path):
    src, _ = small_sequence
    import shutil

    root = tmp_path / "k"
    shutil.copytree(src, root)
    lines = (root / "oxts" / "0000.txt").read_text().splitlines()
    (root / "oxts" / "0000.txt").write_text("\n".join(lines[:15]) + "\n")
    out = subprocess.run([*CLI, "--kitti", root, "--sequence", "0", "--out", tmp_path / "o"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "20 images" in out.stderr and "15 oxts lines" in out.stderr
    assert out.stderr.count("\n") == 1
    out = subprocess.run([*CLI, root, "--out", tmp_path / "o"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "use --kitti" in out.stderr and out.stderr.count("\n") == 1


def test_played_stamps_map_back_to_bag_frames():
    original = [1_000 + 100 * k for k in range(6)]
    assert input_stamp_map(original, original, 1.0) == ({s: s for s in original}, "identity")
    played = [50_000 + 7 * k for k in range(6)]
    assert input_stamp_map(played, original, 20.0) == (dict(zip(played, original)), "order")
    # the recorder missed frame 2: played stamps go to the frame with the nearest recorded timing / rate
    m, how = input_stamp_map([50_000, 50_005, 50_015, 50_020, 50_025], original, 20.0)
    assert how == "time" and list(m.values()) == [1_000, 1_100, 1_300, 1_400, 1_500]
    outs, unknown = remap_outputs({"/t": {50_000: "a", 50_015: "b", 99: "c"}}, m)
    assert outs == {"/t": {1_000: "a", 1_300: "b"}} and unknown == 1


def test_every_frame_is_processed_or_dropped():
    acc = frame_accounting([1, 2, 3, 4, 5], {2: "m", 3: "m"})
    assert acc == {"camera": 5, "processed": 2, "dropped": 3, "dropped_at_end": 2}
    assert frame_accounting([1, 2], {}) == {"camera": 2, "processed": 0, "dropped": 2, "dropped_at_end": 2}


@pytest.fixture(scope="module")
def full_size_sequence(tmp_path_factory):
    """20 frames at the world's default (KITTI) size, where the shipped detector works."""
    root = tmp_path_factory.mktemp("kitti_full")
    _export(root, 20, 1242, 375, seed=200_000)
    return root


def _replay(ros_env, root: Path, out: Path, *mode: str) -> dict:
    cmd = [*CLI, "--kitti", str(root), "--sequence", "0000", *mode, "--out", str(out), "--no-plots",
           "--set", "detector_node.threads:=2"]
    res = subprocess.run(cmd, env=ros_env.env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.dds
@pytest.mark.slow
def test_replay_eval_lockstep_on_a_kitti_sequence(full_size_sequence, tmp_path, ros_env):
    assert (ROOT / "models" / "detector.onnx").exists()
    s = _replay(ros_env, full_size_sequence, tmp_path / "run", "--lockstep")
    assert s["frames"] == {"input": 20, "observations": 20, "detections": 20, "tracks": 20}
    assert s["frame_accounting"] == {"camera": 20, "processed": 20, "dropped": 0, "dropped_at_end": 0}
    assert s["dropped_frames"] == 0 and s["run"]["stamp_mapping"] == "identity"
    car = s["detection"]["classes"]["car"]
    assert car["num_gt"] > 20 and car["ap2d_r40@0.7"] > 25.0, car  # percent; 72.8 measured
    assert s["mot_2d"]["car"]["HOTA"] > 0.15, s["mot_2d"]["car"]  # fraction; 0.41 measured
    from ba_perception.eval.replay import read_outputs

    tracks = read_outputs(tmp_path / "run" / "outputs")["/ba_perception/tracks"]
    assert sum(len(m.tracks) for m in tracks.values()) > 20


@pytest.mark.dds
@pytest.mark.slow
def test_real_time_replay_reports_dropped_frames_honestly(full_size_sequence, tmp_path, ros_env):
    # 20x the recorded 10 Hz is 200 frames/s: far beyond a CPU pipeline, so most frames must drop.
    s = _replay(ros_env, full_size_sequence, tmp_path / "run", "--rate", "20")
    acc = s["frame_accounting"]
    assert acc["camera"] == 20 and acc["processed"] + acc["dropped"] == 20
    assert acc["dropped"] > 0 and acc["processed"] >= 1, acc
    assert s["dropped_frames"] == acc["dropped"]
    assert s["run"]["stamp_mapping"] == "order" and s["run"]["unmapped_outputs"] == 0
    # outputs were mapped back to the bag's frames: every track message belongs to a processed frame
    assert s["frames"]["tracks"] == acc["processed"]
    assert len(bag_frame_stamps(tmp_path / "run" / "inputs", "/camera/camera_info")) == 20
