"""track_buffer_node over real DDS: noisy single-frame depths of a parked car get refined by object BA."""

from __future__ import annotations

import time

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
                                               "num_points": 32, "max_iterations": 10,  # the 40 samples' matches
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
    bad.encoding, bad.header.stamp = "bayer_rggb8", ns_to_time(T0 + 3 * DT)  # an encoding the stack does not read
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


def test_node_over_dds_equals_the_in_process_stage(ros_env):
    """What track_buffer_node publishes is exactly what TrackBufferStage (eval-oba, bench pipeline) computes.

    The node runs with its declared defaults (KLT on the camera images); the same observation,
    odometry and image messages go through the in-process stage, and the published
    Detection3DArray must equal, field by field, the messages made from the stage's boxes.
    """
    from nav_msgs.msg import Odometry
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from ba_perception.core.oba.refine import publishable_boxes
    from ba_perception.core.oba.stage import TrackBufferConfig, TrackBufferStage
    from ba_perception.nodes.track_buffer_node import TrackBufferNode, refined_to_msgs, to_observations
    from ba_perception.ros.convert import extrinsics_to_matrix, odometry_to_matrix
    from ba_perception.ros.image import image_to_gray, numpy_to_image
    from ba_perception.ros.node import ns_to_time
    from ba_perception.ros.observations import msg_to_observations
    from ba_perception_msgs.msg import Detection3D, Detection3DArray, ObjectObservationArray

    from diagnostic_msgs.msg import DiagnosticArray

    n_frames, overrides = 12, {"device": "cpu", "ego_wait_s": 0.5, "diagnostics_period_s": 0.05}
    rng = np.random.default_rng(11)
    points_obj = rng.uniform(-0.5, 0.5, (25, 3)) * SIZE
    desc = rng.normal(size=(25, 16))
    texture = rng.integers(0, 255, (375, 1242 + 4 * n_frames), dtype=np.uint8)

    def image(k):  # a textured scene sliding left 4 px per frame: KLT finds and follows corners
        img = numpy_to_image(np.ascontiguousarray(texture[:, 4 * k: 4 * k + 1242]), "mono8")
        img.header.stamp = ns_to_time(T0 + k * DT)
        return img

    node = ros_env.node("feeder_equal")
    obs_pub = node.create_publisher(ObjectObservationArray, "/ba_perception/observations", 10)
    odom_pub = node.create_publisher(Odometry, "/odom", 50)
    img_pub = node.create_publisher(Image, "/camera/image_raw", 10)
    out: list = []
    node.create_subscription(Detection3DArray, "/ba_perception/detections", out.append, 50)
    images_in = [0]  # images the node has received (its diagnostics): a frame's image must be there first

    def on_diag(msg):
        for st in msg.status:
            if st.hardware_id == "track_buffer_node":
                images_in[0] = max(images_in[0], *(int(kv.value) for kv in st.values if kv.key == "images_in"), 0)

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    spin = ros_env.spinner()
    proc = ros_env.start("track_buffer_node", overrides)
    wait_for(lambda: obs_pub.get_subscription_count() and odom_pub.get_subscription_count()
             and img_pub.get_subscription_count(), 30, spin, "subscribe")
    params = {s.name: s.default for s in TrackBufferNode.PARAMS} | overrides
    stage = TrackBufferStage(TrackBufferConfig.from_params(params, "cpu"))
    assert stage.needs_images  # the shipped correspondences: KLT
    T_base_cam = extrinsics_to_matrix(params["camera_extrinsics"])
    images = [image(k) for k in range(n_frames)]
    threads = torch.get_num_threads()
    torch.set_num_threads(params["threads"])  # as the node: the same summation order
    try:
        def send_image(img):
            """Publish until the node has it: the first images can be lost to best-effort delivery while
            the node's side of the match is still being made (it then runs its frame on priors only)."""
            deadline, seen = time.monotonic() + 30, images_in[0]
            while images_in[0] == seen:
                assert time.monotonic() < deadline, "the node receives no images"
                img_pub.publish(img)
                end = time.monotonic() + 1.0
                while images_in[0] == seen and time.monotonic() < end:
                    spin()

        for k in range(2):
            send_image(images[k])
        for k in range(n_frames):
            if k + 2 < n_frames:  # images go two frames ahead of their observations
                send_image(images[k + 2])
            _publish_odom(odom_pub, k)
            odom = Odometry()
            odom.pose.pose.position.x, odom.pose.pose.orientation.w = 1.0 * k, 1.0
            T_odom_cam = odometry_to_matrix(odom) @ T_base_cam
            msg, _, _ = _frame(k, rng, points_obj, desc, T_odom_cam)
            n = len(out)
            obs_pub.publish(msg)
            frame = msg_to_observations(msg)
            res = stage.step(frame.stamp_ns, to_observations(frame), T_odom_cam, frame.K, image_to_gray(images[k]))
            want = [deserialize_message(serialize_message(d), Detection3D) for d in refined_to_msgs(publishable_boxes(res.boxes)[0])]
            wait_for(lambda: len(out) > n, 30, spin, f"output of frame {k}")
            got = out[-1]
            assert got.header.stamp == msg.header.stamp
            assert list(got.detections) == want, f"frame {k}: node {got.detections} != stage {want}"
    finally:
        torch.set_num_threads(threads)
    assert out[-1].detections[0].refined and out[-1].detections[0].num_frames == 8  # the BA window
    assert proc.poll() is None
