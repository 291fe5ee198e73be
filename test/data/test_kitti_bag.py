"""KITTI tracking sequence -> rosbag2 conversion (data/kitti_bag.py) against the world it was exported from."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ba_perception.data.bag import read_bag
from ba_perception.data.kitti import occlusion_level, truncation_level
from ba_perception.data.kitti_bag import (DEFAULT_START_STAMP_NS, OCCLUSION_OF_LEVEL, TRUNCATION_OF_LEVEL,
                                          KittiBagError, check_sequence, kitti_to_bag)
from ba_perception.eval.replay import extrinsics_from_bag


def test_bag_from_kitti_matches_the_world(small_kitti_sequence, tmp_path):
    root, world = small_kitti_sequence
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


def test_invalid_sequences_are_refused_with_the_reason(small_kitti_sequence, tmp_path):
    src, _ = small_kitti_sequence
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


def test_label_file_becomes_the_ground_truth_of_a_bag(small_kitti_sequence, tmp_path):
    from ba_perception.data.bag import BagWriter
    from ba_perception.data.kitti_bag import bag_with_labels

    root, world = small_kitti_sequence
    with BagWriter(tmp_path / "src") as w:  # a world bag; its own ground truth is replaced
        for f in world:
            w.write(f)
    info = bag_with_labels(tmp_path / "src", root / "label_02" / "0000.txt", tmp_path / "dst")
    assert (info.frames, info.width, info.height) == (20, 320, 96)
    back = list(read_bag(tmp_path / "dst", images=True))
    assert len(back) == 20
    for f, b in zip(world, back):
        assert b.stamp_ns == f.stamp_ns and np.array_equal(b.image, f.image)
        assert np.allclose(b.T_odom_base, f.T_odom_base) and np.allclose(b.T_base_cam, f.T_base_cam)
        g, h = f.objects, b.objects
        keep = np.isfinite(g.box_full).all(1)
        assert np.array_equal(h.track_id, g.track_id[keep])
        assert np.allclose(h.center_cam, g.center_cam[keep], atol=2e-6)
        assert np.allclose(h.center_odom, g.center_odom[keep], atol=1e-5)  # the bag's own odometry
        assert np.allclose(h.size_lwh, g.size_lwh[keep], atol=2e-6)
    # more labelled frames than images: refused
    lines = (root / "label_02" / "0000.txt").read_text().splitlines()
    (tmp_path / "late.txt").write_text("\n".join([*lines, "25 " + lines[0].split(" ", 1)[1]]) + "\n")
    with pytest.raises(KittiBagError, match="labels frame 25 but .* only 20 images"):
        bag_with_labels(tmp_path / "src", tmp_path / "late.txt", tmp_path / "dst2")


def test_camera_mount_is_the_transform_to_the_images_frame(tmp_path):
    """A real bag's /tf_static carries other sensors too (lidar first here): only the camera's counts."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ba_perception.data.bag import camera_mount, typestore

    store = typestore()
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]

    def tf(child, x):
        return T["geometry_msgs/msg/TransformStamped"](
            header=Header(stamp=Time(sec=0, nanosec=0), frame_id="base_link"), child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=x, y=0.0, z=1.0),
                                                       rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)))

    image = T["sensor_msgs/msg/Image"](header=Header(stamp=Time(sec=1, nanosec=0), frame_id="cam_front"), height=1,
                                       width=1, encoding="mono8", is_bigendian=0, step=1, data=np.zeros(1, np.uint8))
    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=store)
        c_im = w.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=store)
        w.write(c_tf, 0, store.serialize_cdr(T["tf2_msgs/msg/TFMessage"](transforms=[tf("lidar", 0.5), tf("cam_front", 2.0)]),
                                             "tf2_msgs/msg/TFMessage"))
        w.write(c_im, 1, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
    assert camera_mount(tmp_path / "bag", "/cam/image")[0, 3] == 2.0
    assert camera_mount(tmp_path / "bag", "/no/such/topic") is None
