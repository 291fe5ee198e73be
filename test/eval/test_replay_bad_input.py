"""replay-eval refuses unusable bags with a one-line reason and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer

from ba_perception.ros.bag_types import default_typestore

CLI = [str(Path(sys.prefix) / "bin" / "ba-perception"), "replay-eval"]


def _run(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_missing_bag(tmp_path):
    out = _run(tmp_path / "nope", "--out", tmp_path / "o")
    assert out.returncode == 2 and "does not exist" in out.stderr and out.stderr.count("\n") == 1


def test_bag_without_camera_topic(tmp_path):
    store = default_typestore()
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=store)
        from rclpy.serialization import serialize_message
        from nav_msgs.msg import Odometry

        w.write(conn, 1, serialize_message(Odometry()))
    out = _run(tmp_path / "bag", "--out", tmp_path / "o")
    assert out.returncode == 2 and "no messages on /camera/image_raw" in out.stderr
    assert out.stderr.count("\n") == 1


def test_truncated_bag(tmp_path):
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"\x89MCAP0\r\ntruncated")
    out = _run(bad, "--out", tmp_path / "o")
    assert out.returncode == 2 and "cannot read bag" in out.stderr
