"""bag_player plays nothing before every node it waits for announced readiness (slow start), and
refuses to play, loudly, when a node never becomes ready."""

from __future__ import annotations

import time

import pytest

from conftest import stack_params, wait_for, write_camera_bag

pytestmark = pytest.mark.dds


def _listen(ros_env):
    from diagnostic_msgs.msg import DiagnosticStatus
    from sensor_msgs.msg import Image

    from ba_perception.graph import READY_TOPIC
    from ba_perception.ros.params import qos_profile

    frames: list[float] = []
    ready: dict[str, float] = {}
    node = ros_env.node("readiness_probe")
    node.create_subscription(Image, "/camera/image_raw", lambda _m: frames.append(time.monotonic()), 50)
    node.create_subscription(DiagnosticStatus, READY_TOPIC, lambda m: ready.setdefault(m.hardware_id, time.monotonic()),
                             qos_profile("reliable_history", 50))
    return frames, ready, ros_env.spinner()


def test_no_frame_before_a_slow_node_is_ready(ros_env, tmp_path):
    src = tmp_path / "bag"
    write_camera_bag(src, n_frames=10)
    frames, ready, spin = _listen(ros_env)
    player = ros_env.start("bag_player", stack_params("bag_player", bag=str(src), rate=5.0, lockstep=False,
                                                      wait_for_nodes=["late_node"]))
    wait_for(lambda: "bag_player" in ready, 60, spin, "the player started")
    deadline = time.monotonic() + 3.0  # the late node is not there yet: nothing may be played meanwhile
    while time.monotonic() < deadline:
        spin()
    assert frames == [] and player.poll() is None
    # the delayed node: a visualizer (it subscribes to the camera image) under the awaited name
    ros_env.start("visualizer_node", stack_params("visualizer_node"), remaps={"__node": "late_node"})
    wait_for(lambda: len(frames) == 10, 90, spin, "all frames after the late node was ready")
    assert "late_node" in ready and frames[0] >= ready["late_node"]
    assert player.wait(30) == 0, ros_env.logs()


def test_player_refuses_to_play_when_a_node_never_gets_ready(ros_env, tmp_path):
    src = tmp_path / "bag"
    write_camera_bag(src, n_frames=5)
    frames, _ready, spin = _listen(ros_env)
    player = ros_env.start("bag_player", stack_params("bag_player", bag=str(src), wait_for_nodes=["never_node"],
                                                      ready_timeout_s=2.0))
    wait_for(lambda: player.poll() is not None, 60, spin, "the player gave up")
    assert player.returncode == 1
    log = open(player.log_path).read()
    assert "not playing: still waiting for never_node" in log
    assert frames == []
