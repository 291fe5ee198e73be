"""detector_node over real DDS: every kind of bad camera input is rejected, counted, and survived."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import wait_for

pytestmark = [pytest.mark.dds, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from ba_perception.core.detection.model import MonoDetector, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, MonoDetector(pretrained=False))
    return path


def test_bad_inputs_are_counted_and_node_keeps_running(ros_env, checkpoint):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from ba_perception.ros.convert import k_to_camera_info
    from ba_perception.ros.image import numpy_to_image
    from ba_perception.ros.node import ns_to_time
    from ba_perception_msgs.msg import ObjectObservationArray

    node = ros_env.node("feeder")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    img_pub = node.create_publisher(Image, "/camera/image_raw", qos)
    info_pub = node.create_publisher(CameraInfo, "/camera/camera_info", qos)
    counters: dict[str, int] = {}
    outputs: list[int] = []

    def on_diag(msg):
        for st in msg.status:
            if st.hardware_id == "detector_node":
                counters.update({kv.key: int(kv.value) for kv in st.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    node.create_subscription(ObjectObservationArray, "/ba_perception/observations",
                             lambda m: outputs.append(m.header.stamp.sec), 50)
    spin = ros_env.spinner()
    proc = ros_env.start("detector_node", {"backend": "torch", "checkpoint": str(checkpoint), "input_qos": "reliable",
                                           "diagnostics_period_s": 0.1, "threads": 1})
    wait_for(lambda: img_pub.get_subscription_count() > 0 and info_pub.get_subscription_count() > 0, 60, spin,
             "detector_node to subscribe")
    K = np.array([[60.0, 0, 40], [0, 60.0, 30], [0, 0, 1]])
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    sec = [100]

    def send(image=None, info=None, stamp_sec=None):
        s = sec[0] if stamp_sec is None else stamp_sec
        sec[0] += 1
        img = image if image is not None else numpy_to_image(rgb, "rgb8")
        img.header.stamp = ns_to_time(s * 10**9)
        cam = info if info is not None else k_to_camera_info(K, 80, 60)
        cam.header.stamp = img.header.stamp
        img_pub.publish(img)
        info_pub.publish(cam)

    def wait_counter(key, n=1):
        wait_for(lambda: counters.get(key, 0) >= n, 30, spin, f"counter {key}")

    send()
    wait_for(lambda: len(outputs) >= 1, 60, spin, "first good frame processed")

    bad = numpy_to_image(rgb, "rgb8")
    bad.encoding = "bayer_rggb8"
    send(image=bad)
    wait_counter("rejected.encoding")

    bad = numpy_to_image(rgb, "rgb8")
    bad.data = bad.data[:-7]
    send(image=bad)
    wait_counter("rejected.size")

    empty = Image(encoding="rgb8", height=0, width=0, step=0)
    send(image=empty, info=k_to_camera_info(K, 80, 60))
    wait_counter("rejected.empty")

    nan_info = k_to_camera_info(K, 80, 60)
    nan_info.k[0] = math.nan
    send(info=nan_info)
    wait_counter("rejected.intrinsics")

    zero_info = k_to_camera_info(K, 80, 60)
    zero_info.k[0] = 0.0
    send(info=zero_info)
    wait_counter("rejected.intrinsics", 2)

    send(stamp_sec=5)  # bag looped: stamps went backwards -> reset, frame still processed
    wait_counter("rejected.stamp_backwards")

    before = len(outputs)
    send(stamp_sec=6)
    wait_for(lambda: len(outputs) > before, 60, spin, "a good frame after all the bad ones")
    assert proc.poll() is None, "detector_node died"
    assert counters.get("processing_error", 0) == 0 and counters.get("rejected.processing_error", 0) == 0
