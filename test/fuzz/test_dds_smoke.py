"""DDS smoke run: the stack's nodes as real processes take a few hundred adversarial messages over DDS,
stay alive, and still produce output for good input afterwards (issue 21)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import wait_for
from fuzz.harness import camera_info, detections, image, observations, odometry, tracks
from fuzz.msggen import Fuzzer

pytestmark = [pytest.mark.dds, pytest.mark.slow]

N_ADVERSARIAL = 300
GOOD_TIMEOUT_S = 90.0


def test_nodes_survive_adversarial_messages_over_dds(ros_env):
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from visualization_msgs.msg import MarkerArray

    from ba_perception_msgs.msg import Detection3DArray, LatencyReport, ObjectObservationArray, Track3DArray

    node = ros_env.node("fuzzer")
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {
        "image": node.create_publisher(Image, "/camera/image_raw", qos),
        "info": node.create_publisher(CameraInfo, "/camera/camera_info", qos),
        "odom": node.create_publisher(Odometry, "/odom", qos),
        "obs": node.create_publisher(ObjectObservationArray, "/fuzz/observations", qos),
        "dets": node.create_publisher(Detection3DArray, "/fuzz/detections", qos),
        "tracks": node.create_publisher(Track3DArray, "/fuzz/tracks", qos),
    }
    got: dict[str, list] = {k: [] for k in ("observations", "detections", "tracks", "markers", "latency")}
    node.create_subscription(ObjectObservationArray, "/ba_perception/observations", got["observations"].append, 50)
    node.create_subscription(Detection3DArray, "/ba_perception/detections", got["detections"].append, 50)
    node.create_subscription(Track3DArray, "/ba_perception/tracks", got["tracks"].append, 50)
    node.create_subscription(MarkerArray, "/ba_perception/markers", got["markers"].append, 50)
    node.create_subscription(LatencyReport, "/ba_perception/latency", got["latency"].append, 50)
    spin = ros_env.spinner()
    # Each node gets its own input topic from the test, so every node sees the adversarial stream directly.
    procs = {
        "detector_node": ros_env.start("detector_node", {"backend": "onnxruntime", "threads": 1, "input_qos": "reliable"}),
        "track_buffer_node": ros_env.start("track_buffer_node", {"input_topic": "/fuzz/observations", "ego_wait_s": 0.0,
                                                                 "max_iterations": 3}),
        "tracker_node": ros_env.start("tracker_node", {"input_topic": "/fuzz/detections"}),
        "visualizer_node": ros_env.start("visualizer_node", {"input_topic": "/fuzz/tracks", "qos": "reliable"}),
        "latency_monitor": ros_env.start("latency_monitor", {"output_topic": "/fuzz/tracks", "report_period_s": 0.2}),
    }
    wait_for(lambda: pubs["image"].get_subscription_count() >= 4 and pubs["info"].get_subscription_count() >= 1
             and pubs["odom"].get_subscription_count() >= 1 and pubs["obs"].get_subscription_count() >= 1
             and pubs["dets"].get_subscription_count() >= 1 and pubs["tracks"].get_subscription_count() >= 2,
             90, spin, "every node to subscribe")

    fz, rng = Fuzzer(21, max_seq=200, max_bytes=1 << 18), np.random.default_rng(21)
    makers = {
        "image": lambda k: image(k, rng, 640, 192), "info": lambda k: camera_info(k, 640, 192), "odom": odometry,
        "obs": lambda k: observations(k, rng), "dets": lambda k: detections(k, rng), "tracks": lambda k: tracks(k, rng),
    }
    sent = unsendable = 0
    names = list(pubs)
    for k in range(N_ADVERSARIAL):
        key = names[k % len(names)]
        valid = makers[key](k)
        msg = fz.mutate(valid)[0] if fz.rng.random() < 0.8 else fz.random(type(valid))
        try:
            pubs[key].publish(msg)
            sent += 1
        except Exception:  # noqa: BLE001 - a value rclpy itself cannot serialize never reaches a node
            unsendable += 1
        if k % 20 == 0:
            spin()
    assert sent >= 0.9 * N_ADVERSARIAL, f"only {sent} adversarial messages could be sent ({unsendable} unsendable)"
    for _ in range(50):
        spin()
    assert all(p.poll() is None for p in procs.values()), \
        f"died: {[n for n, p in procs.items() if p.poll() is not None]}"

    # Good input afterwards: every node produces output again (stamps far after the adversarial ones'
    # range restart each node's state once, counted as stamp_backwards where they jumped).
    base = 10_000
    n0 = {k: len(v) for k, v in got.items()}
    deadline = time.monotonic() + GOOD_TIMEOUT_S
    k = base
    while not all(len(got[key]) > n0[key] for key in got):
        assert time.monotonic() < deadline, f"no output for good input from: {[key for key in got if len(got[key]) <= n0[key]]}"
        pubs["odom"].publish(odometry(k))
        pubs["image"].publish(image(k, rng, 640, 192))
        pubs["info"].publish(camera_info(k, 640, 192))
        pubs["obs"].publish(observations(k, rng))
        pubs["dets"].publish(detections(k, rng))
        pubs["tracks"].publish(tracks(k, rng))
        k += 1
        t_end = time.monotonic() + 0.3
        while time.monotonic() < t_end:
            spin()
    assert all(p.poll() is None for p in procs.values())
    assert got["latency"][-1].frames_received > 0
