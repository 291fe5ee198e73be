"""replay-eval on KITTI tracking sequences (as the world's exporter writes them) and honest drop accounting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import export_kitti_sequence

from ba_perception.eval.replay import ReplayError, bag_frame_stamps, frame_accounting, read_stamp_map, remap_outputs

CLI = [str(Path(sys.prefix) / "bin" / "ba-perception"), "replay-eval"]
ROOT = Path(__file__).resolve().parents[2]


def test_cli_reports_a_bad_kitti_sequence_in_one_line(small_kitti_sequence, tmp_path):
    src, _ = small_kitti_sequence
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
    out = subprocess.run([*CLI, "--kitti", root, "--labels", root / "label_02" / "0000.txt", "--out", tmp_path / "o"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--labels scores a BAG" in out.stderr and not (tmp_path / "o").exists()


def test_played_stamps_map_back_to_bag_frames(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"50000": 1_000, "50015": 1_300}))
    m = read_stamp_map(tmp_path / "map.json")
    assert m == {50_000: 1_000, 50_015: 1_300}
    outs, unknown = remap_outputs({"/t": {50_000: "a", 50_015: "b", 99: "c"}}, m)
    assert outs == {"/t": {1_000: "a", 1_300: "b"}} and unknown == 1
    (tmp_path / "bad.json").write_text("{")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        with pytest.raises(ReplayError, match="stamp map"):
            read_stamp_map(path)


def test_every_frame_is_processed_or_dropped():
    acc = frame_accounting([1, 2, 3, 4, 5], {2: "m", 3: "m"})
    assert acc == {"camera": 5, "processed": 2, "dropped": 3, "dropped_at_end": 2}
    assert frame_accounting([1, 2], {}) == {"camera": 2, "processed": 0, "dropped": 2, "dropped_at_end": 2}


@pytest.fixture(scope="module")
def full_size_sequence(tmp_path_factory):
    """20 frames at the world's default (KITTI) size, where the shipped detector works."""
    root = tmp_path_factory.mktemp("kitti_full")
    export_kitti_sequence(root, 20, 1242, 375, seed=200_000)
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
    why = json.dumps({k: s.get(k) for k in ("frames", "frame_accounting", "run")}) + str(s["latency"].get("counters"))
    assert acc["camera"] == 20 and acc["processed"] + acc["dropped"] == 20, why
    assert acc["dropped"] > 0 and acc["processed"] >= 1, why
    assert s["dropped_frames"] == acc["dropped"]
    assert s["run"]["stamp_mapping"] == "player" and s["run"]["unmapped_outputs"] == 0, why
    # outputs were mapped back to the bag's frames: every track message belongs to a processed frame
    assert s["frames"]["tracks"] == acc["processed"]
    # ... to the right frames: the detections of the processed frames match their ground truth
    assert s["detection"]["classes"]["car"]["ap2d_r40@0.7"] > 40.0, why  # percent; 80-100 measured (2 frames)
    # the player's map holds one restamped stamp per camera frame it played
    played = read_stamp_map(tmp_path / "run" / "stamp_map.json")
    assert sorted(set(played.values())) == sorted(bag_frame_stamps(tmp_path / "run" / "kitti_0000", "/camera/camera_info"))


@pytest.mark.dds
@pytest.mark.slow
def test_replay_eval_scores_a_bag_against_a_kitti_label_file(full_size_sequence, tmp_path, ros_env):
    from ba_perception.data.kitti_bag import kitti_to_bag

    kitti_to_bag(full_size_sequence, 0, tmp_path / "bag")
    cmd = [*CLI, str(tmp_path / "bag"), "--labels", str(full_size_sequence / "label_02" / "0000.txt"),
           "--out", str(tmp_path / "run"), "--no-plots", "--set", "detector_node.threads:=2"]
    res = subprocess.run(cmd, env=ros_env.env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["run"]["bag"] == str(tmp_path / "run" / "labelled")
    assert s["frame_accounting"]["processed"] == 20
    car = s["detection"]["classes"]["car"]
    assert car["num_gt"] > 20 and car["ap2d_r40@0.7"] > 25.0, car
