"""Tests of the rosbag2 MCAP writer/reader: rosidl type hashes and a lossless round trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from ba_perception.data.bag import (
    TOPIC_GT,
    TOPIC_IMAGE,
    BagError,
    BagWriter,
    read_bag,
    typestore,
)
from ba_perception.data.world import WorldConfig, render_sequence

SHARE = Path(sys.prefix, "share", "ba_perception_msgs", "msg")


@pytest.fixture(scope="module")
def frames():
    return list(render_sequence(WorldConfig(preset="occlusion_stress", seed=4, width=200, height=96, n_frames=3)))


def _rosidl_hash(name: str) -> str:
    data = json.loads((SHARE / f"{name}.json").read_text())
    return next(h["hash_string"] for h in data["type_hashes"] if h["type_name"] == f"ba_perception_msgs/msg/{name}")


@pytest.mark.skipif(not SHARE.is_dir(), reason="ba_perception_msgs not built into the venv")
def test_type_hashes_written_equal_rosidl(tmp_path, frames):
    with BagWriter(tmp_path / "b") as bag:
        bag.write(frames[0])
    with Reader(tmp_path / "b") as r:
        written = {c.topic: c for c in r.connections}
    for name in ("GroundTruthObjectArray", "GroundTruthObject"):
        assert typestore().hash_rihs01(f"ba_perception_msgs/msg/{name}") == _rosidl_hash(name)
    assert written[TOPIC_GT].digest == _rosidl_hash("GroundTruthObjectArray")
    assert written[TOPIC_GT].msgdef.data.strip()  # definition embedded for other tools


def test_round_trip_reads_back_equal_frames(tmp_path, frames):
    with BagWriter(tmp_path / "seq") as bag:
        for f in frames:
            bag.write(f)
    back = list(read_bag(tmp_path / "seq"))
    assert len(back) == len(frames)
    for f, b in zip(frames, back):
        assert b.stamp_ns == f.stamp_ns
        assert np.array_equal(b.image, f.image)
        assert np.allclose(b.K, f.K)
        for name in ("T_odom_base", "T_odom_cam", "T_base_cam"):
            assert np.allclose(getattr(b, name), getattr(f, name), atol=1e-9), name
        assert np.allclose(b.velocity_base, f.velocity_base) and b.yaw_rate == pytest.approx(f.yaw_rate)
        g, h = f.objects, b.objects
        assert len(g) > 0
        assert np.array_equal(h.track_id, g.track_id) and h.class_label == g.class_label
        for name in ("T_cam_obj", "T_odom_obj", "rotation_y", "size_lwh", "velocity_odom", "yaw_odom"):
            assert np.allclose(getattr(h, name), getattr(g, name), atol=1e-6), name
        # float32 fields in the message
        for name in ("box_amodal", "box_visible", "truncation", "occlusion"):
            assert np.allclose(getattr(h, name), getattr(g, name), atol=1e-3, equal_nan=True), name


def test_frame_ids_and_encoding_follow_the_conventions(tmp_path, frames):
    with BagWriter(tmp_path / "c") as bag:
        bag.write(frames[0])
    store = typestore()
    with Reader(tmp_path / "c") as r:
        msgs = {c.topic: store.deserialize_cdr(raw, c.msgtype) for c, _, raw in r.messages()}
    assert msgs[TOPIC_IMAGE].header.frame_id == "camera_optical" and msgs[TOPIC_IMAGE].encoding == "rgb8"
    assert msgs["/odom"].header.frame_id == "odom" and msgs["/odom"].child_frame_id == "base_link"
    tf = msgs["/tf_static"].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("base_link", "camera_optical")


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(BagError, match="exists"):
        BagWriter(tmp_path / "x")


def test_gt_only_bag_reads_without_images(tmp_path, frames):
    with BagWriter(tmp_path / "g", write_images=False) as bag:
        for f in frames:
            bag.write(f)
    back = list(read_bag(tmp_path / "g"))
    assert [b.image for b in back] == [None] * len(frames)
    assert [b.stamp_ns for b in back] == [f.stamp_ns for f in frames]
