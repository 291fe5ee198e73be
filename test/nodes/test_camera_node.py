"""camera_node publishes frames from an image folder and a video file with the calibration's K."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml

from conftest import wait_for

pytestmark = pytest.mark.dds

K = [[400.0, 0.0, 31.5], [0.0, 410.0, 23.5], [0.0, 0.0, 1.0]]


def _calibration(path, w=64, h=48):
    path.write_text(yaml.safe_dump({
        "image_width": w, "image_height": h, "camera_name": "test",
        "camera_matrix": {"rows": 3, "cols": 3, "data": [v for row in K for v in row]},
        "distortion_model": "plumb_bob", "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.0] * 5},
    }))
    return path


def _listen(ros_env):
    from sensor_msgs.msg import CameraInfo, Image

    from ba_perception.ros.image import image_to_rgb

    node = ros_env.node("listener")
    frames, infos = [], []
    node.create_subscription(Image, "/camera/image_raw", lambda m: frames.append((m.header.stamp, image_to_rgb(m))), 20)
    node.create_subscription(CameraInfo, "/camera/camera_info", lambda m: infos.append(m), 20)
    return frames, infos, ros_env.spinner()


def test_image_folder(ros_env, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    # 20 files at 20 Hz: the subscription side of DDS discovery may still be matching for the first
    # frames on a loaded machine (the node only knows that its publisher sees the subscription)
    written = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    for i, rgb in enumerate(written):
        cv2.imwrite(str(folder / f"{i:04d}.png"), rgb[..., ::-1])
    frames, infos, spin = _listen(ros_env)
    proc = ros_env.start("camera_node", {"source": str(folder), "calibration": str(_calibration(tmp_path / "c.yaml")),
                                         "rate_hz": 20.0, "wait_for_subscribers": 1})
    wait_for(lambda: proc.poll() is not None, 30, spin, "camera_node to finish the folder")
    for _ in range(20):
        spin()
    assert proc.returncode == 0
    # Discovery may hide the first frame or two; what arrives must be the files, in order, with K.
    assert len(frames) >= 3
    for (stamp, rgb), info in zip(frames, infos):
        assert any(np.array_equal(rgb, w) for w in written)
        assert np.allclose(np.reshape(info.k, (3, 3)), K) and info.header.stamp == stamp
    idx = [next(i for i, w in enumerate(written) if np.array_equal(rgb, w)) for _, rgb in frames]
    assert idx == sorted(idx)


def test_video_file_and_bad_source(ros_env, tmp_path):
    video = tmp_path / "v.avi"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(8):
        wr.write(np.full((48, 64, 3), i * 30, np.uint8))
    wr.release()
    frames, infos, spin = _listen(ros_env)
    proc = ros_env.start("camera_node", {"source": str(video), "calibration": str(_calibration(tmp_path / "c.yaml")),
                                         "rate_hz": 20.0, "wait_for_subscribers": 1})
    wait_for(lambda: proc.poll() is not None, 30, spin, "camera_node to finish the video")
    for _ in range(20):
        spin()
    assert proc.returncode == 0 and len(frames) >= 4
    assert all(rgb.shape == (48, 64, 3) for _, rgb in frames)
    bad = ros_env.start("camera_node", {"source": str(tmp_path / "missing.mp4"), "allow_uncalibrated": True})
    assert bad.wait(20) == 2
    assert "neither a video file" in ros_env.logs()
