"""track_buffer_node over real DDS: noisy single-frame depths of a parked car get refined by object BA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import wait_for

pytestmark = [pytest.mark.dds, pytest.mark.slow]

T0 = 2_000 * 10**9
DT = 100_000_000
K = np.array([[700.0, 0, 620], [0, 700.0, 187], [0, 0, 1]])
CAR_ODOM = np.array([30.0, 4.0, 0.78])
SIZE = np.array([4.2, 1.8, 1.56])


def _frame(k, rng, points_obj, desc, T_odom_cam):
    from ba_perception.core import geometry
    from ba_perception.ros.convert import matrix_to_pose
    from ba_perception.ros.node import make_stage, ns_to_time, wall_ns
    from ba_perception_msgs.msg import ObjectObservation, ObjectObservationArray

    T_cam_odom = np.linalg.inv(T_odom_cam)
    c_true = T_cam_odom[:3, :3] @ CAR_ODOM + T_cam_odom[:3, 3]
    R = T_cam_odom[:3, :3]  # car aligned with odom x
    ray = c_true / np.linalg.norm(c_true)
    c_noisy = c_true + ray * rng.normal(0, 1.5)  # single-frame depth error along the ray
    pts_cam = points_obj @ R.T + c_true
    uv = geometry.project_points(torch.tensor(pts_cam), torch.tensor(K)).numpy() + rng.normal(0, 0.5, (len(pts_cam), 2))
    corners = geometry.box_corners(torch.tensor(R), torch.tensor(c_true), torch.tensor(SIZE))
    box = geometry.box2d_from_points(geometry.project_points(corners, torch.tensor(K))).numpy()
    o = ObjectObservation(class_label="car", score=0.9, box_2d=box.tolist(),
                          pose=matrix_to_pose(np.block([[R, c_noisy[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])),
                          depth_std=1.5, lateral_std=0.15, yaw_std=0.1, embedding=[1.0, 0.0, 0.0],
                          descriptor_dim=desc.shape[1], sample_uv=uv.ravel().tolist(),
                          descriptors=(desc + rng.normal(0, 0.02, desc.shape)).ravel().tolist())
    o.size.x, o.size.y, o.size.z = SIZE
    msg = ObjectObservationArray(image_width=1242, image_height=375, k=K.ravel().tolist(), observations=[o])
    msg.header.stamp, msg.header.frame_id = ns_to_time(T0 + k * DT), "camera_optical"
    now = wall_ns()
    msg.trace.append(make_stage("detector", now, now, now))
    return msg, float(np.linalg.norm(c_noisy) - np.linalg.norm(c_true)), c_true


def _publish_odom(odom_pub, k: int) -> tuple[np.ndarray, object]:
    """Ego pose of frame k (1 m/frame along odom x) published as Odometry; returns T_odom_base and the stamp."""
    from nav_msgs.msg import Odometry

    from ba_perception.ros.node import ns_to_time

    T_odom_base = np.eye(4)
    T_odom_base[0, 3] = 1.0 * k
    odom = Odometry()
    odom.header.stamp, odom.header.frame_id = ns_to_time(T0 + k * DT), "odom"
    odom.pose.pose.position.x, odom.pose.pose.orientation.w = T_odom_base[0, 3], 1.0
    odom_pub.publish(odom)
    return T_odom_base, odom.header.stamp


def test_refined_depth_error_below_single_frame(ros_env):
    from nav_msgs.msg import Odometry

    from ba_perception.ros.convert import extrinsics_to_matrix
    from ba_perception_msgs.msg import Detection3DArray, ObjectObservationArray

    rng = np.random.default_rng(3)
    points_obj = (rng.uniform(-0.5, 0.5, (40, 3)) * SIZE)
    points_obj[:, 1] = -SIZE[1] / 2  # the side facing the camera (car is to the left, camera sees its right side)
    desc = rng.normal(size=(40, 16))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    node = ros_env.node("feeder")
    obs_pub = node.create_publisher(ObjectObservationArray, "/ba_perception/observations", 10)
    odom_pub = node.create_publisher(Odometry, "/odom", 50)
    out: list = []
    node.create_subscription(Detection3DArray, "/ba_perception/detections", out.append, 50)
    spin = ros_env.spinner()
    proc = ros_env.start("track_buffer_node", {"window": 10, "device": "cpu", "ego_wait_s": 0.5, "correspondences": "descriptor",
                                               "static_track_noise_px": 0.5})  # the tracks' pixel noise
    wait_for(lambda: obs_pub.get_subscription_count() and odom_pub.get_subscription_count(), 30, spin, "subscribe")
    T_base_cam = extrinsics_to_matrix([1.2, 0.0, 1.65, 0.0, 0.0, 0.0])
    single, refined = [], []
    for k in range(12):
        T_odom_base, _ = _publish_odom(odom_pub, k)
        msg, err, c_true = _frame(k, rng, points_obj, desc, T_odom_base @ T_base_cam)
        obs_pub.publish(msg)
        n = len(out)
        wait_for(lambda: len(out) > n, 30, spin, f"output of frame {k}")
        if k >= 5:
            d = out[-1].detections[0]
            c = np.array([d.center_camera.x, d.center_camera.y, d.center_camera.z])
            single.append(abs(err))
            refined.append(abs(np.linalg.norm(c) - np.linalg.norm(c_true)))
    last = out[-1]
    assert last.header.frame_id == "odom" and [s.stage for s in last.trace] == ["detector", "track_buffer"]
    det = last.detections[0]
    assert det.refined and det.num_frames == 10 and det.is_static
    assert np.median(refined) < 0.5 * np.median(single), (refined, single)
    centre = np.array([det.pose.position.x, det.pose.position.y, det.pose.position.z])
    assert np.linalg.norm(centre - CAR_ODOM) < 0.5
    assert proc.poll() is None


def test_klt_without_images_falls_back_to_priors_and_counts_it(ros_env):
    """correspondences: klt (the default) with a missing or undecodable image still refines every frame."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    from ba_perception.ros.convert import extrinsics_to_matrix
    from ba_perception.ros.image import numpy_to_image
    from ba_perception.ros.node import ns_to_time
    from ba_perception_msgs.msg import Detection3DArray, ObjectObservationArray

    rng = np.random.default_rng(5)
    points_obj = rng.uniform(-0.5, 0.5, (20, 3)) * SIZE
    desc = rng.normal(size=(20, 16))
    node = ros_env.node("feeder_klt")
    obs_pub = node.create_publisher(ObjectObservationArray, "/ba_perception/observations", 10)
    odom_pub = node.create_publisher(Odometry, "/odom", 50)
    img_pub = node.create_publisher(Image, "/camera/image_raw", 10)
    out: list = []
    counters: dict[str, int] = {}

    def on_diag(msg):
        for st in msg.status:
            if st.hardware_id == "track_buffer_node":
                counters.update({kv.key: int(kv.value) for kv in st.values})

    node.create_subscription(Detection3DArray, "/ba_perception/detections", out.append, 50)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    spin = ros_env.spinner()
    proc = ros_env.start("track_buffer_node", {"device": "cpu", "ego_wait_s": 0.5, "diagnostics_period_s": 0.1})
    wait_for(lambda: obs_pub.get_subscription_count() and img_pub.get_subscription_count(), 30, spin, "subscribe")
    T_base_cam = extrinsics_to_matrix([1.2, 0.0, 1.65, 0.0, 0.0, 0.0])
    # one undecodable image, for frame 3, sent two frames ahead of it; the others are simply missing
    bad = numpy_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    bad.encoding, bad.header.stamp = "bayer_rggb8", ns_to_time(T0 + 3 * DT)
    for k in range(6):
        if k == 1:
            img_pub.publish(bad)
        T_odom_base, _ = _publish_odom(odom_pub, k)
        msg, _, _ = _frame(k, rng, points_obj, desc, T_odom_base @ T_base_cam)
        n = len(out)
        obs_pub.publish(msg)
        wait_for(lambda: len(out) > n, 30, spin, f"output of frame {k}")
    assert out[-1].detections[0].refined and out[-1].detections[0].num_frames == 6
    # the undecodable image is rejected when its frame needs it; the five others are missing
    wait_for(lambda: counters.get("rejected.image_encoding", 0) >= 1, 30, spin, "bad image counted")
    wait_for(lambda: counters.get("rejected.klt_image_missing", 0) >= 5, 30, spin, "missing images counted")
    assert proc.poll() is None
