"""bag_player -> bag_recorder over real DDS in separate processes."""

from __future__ import annotations

import pytest
from rosbags.rosbag2 import Reader

from conftest import wait_for, write_camera_bag

pytestmark = pytest.mark.dds


def _recorded(path):
    with Reader(path) as r:
        return sorted((c.topic, bytes(raw)) for c, _, raw in r.messages())


def _diag_counter(ros_env, node_name: str):
    from diagnostic_msgs.msg import DiagnosticArray

    seen: dict[str, int] = {}
    node = ros_env.node("diag_listener")

    def cb(msg):
        for st in msg.status:
            if st.hardware_id == node_name:
                seen.update({kv.key: int(kv.value) for kv in st.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", cb, 50)
    return seen


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_is_byte_identical(ros_env, tmp_path, storage):
    src = tmp_path / "src"
    written = write_camera_bag(src, n_frames=20, storage=storage)
    out = tmp_path / "rec"
    counters = _diag_counter(ros_env, "bag_recorder")
    spin = ros_env.spinner()
    rec = ros_env.start("bag_recorder", {
        "output": str(out), "topics": ["/camera/image_raw", "/camera/camera_info", "/odom"],
        "types": ["sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "nav_msgs/msg/Odometry"],
        "diagnostics_period_s": 0.1})
    player = ros_env.start("bag_player", {"bag": str(src), "rate": 5.0, "wait_for_subscribers": 1})
    assert player.wait(60) == 0, ros_env.logs()
    wait_for(lambda: counters.get("recorded", 0) >= len(written), 20, spin, "all messages recorded")
    assert ros_env.stop(rec) == 0
    recorded = _recorded(out)
    expected = sorted((t, cdr) for t, _, cdr in written)
    assert [t for t, _ in recorded] == [t for t, _ in expected]
    for (_, got), (_, sent) in zip(recorded, expected):
        # DDS pads serialized payloads to a 4-byte multiple; the message bytes themselves are identical.
        assert got[: len(sent)] == sent
        assert len(got) - len(sent) < 4 and not any(got[len(sent):])


def test_lockstep_delivers_every_frame(ros_env, tmp_path):
    """A slow consumer acknowledges each frame; lockstep must not drop any of 100."""
    import time

    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ba_perception_msgs.msg import Track3DArray

    src = tmp_path / "src"
    write_camera_bag(src, n_frames=100, rate_hz=100.0)
    node = ros_env.node("slow_pipeline")
    got: list[int] = []
    ack = node.create_publisher(Track3DArray, "/ba_perception/tracks", 10)

    def on_image(msg: Image) -> None:
        time.sleep(0.03)  # slower than the bag's 100 Hz: a timed player would overrun us
        got.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
        ack.publish(Track3DArray(header=Header(stamp=msg.header.stamp)))

    from rclpy.qos import QoSProfile, ReliabilityPolicy

    node.create_subscription(Image, "/camera/image_raw", on_image,
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    spin = ros_env.spinner()
    player = ros_env.start("bag_player", {"bag": str(src), "lockstep": True, "topics": ["/camera/image_raw"],
                                          "wait_for_subscribers": 1, "qos": "sensor_data", "qos_depth": 1})
    wait_for(lambda: player.poll() is not None, 60, spin, "player to finish")
    assert player.returncode == 0
    assert len(got) == 100 and len(set(got)) == 100


def test_player_rejects_missing_and_corrupt_bags(ros_env, tmp_path):
    p = ros_env.start("bag_player", {"bag": str(tmp_path / "nope")})
    assert p.wait(20) == 2
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n garbage")
    p = ros_env.start("bag_player", {"bag": str(bad)})
    assert p.wait(20) == 2
    log = ros_env.logs()
    assert "does not exist" in log and "cannot open bag" in log


def test_topics_recorded_latched_are_played_latched(ros_env, tmp_path):
    """A node that subscribes after the bag was played still gets every message of a topic recorded
    from a transient-local publisher (as /tf_static is), and none of a volatile one."""
    from nav_msgs.msg import Odometry
    from rclpy.serialization import serialize_message
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import Writer

    from ba_perception.ros.bag_types import default_typestore
    from ba_perception.ros.node import ns_to_time
    from ba_perception.ros.params import qos_profile

    zero = QosTime(0, 0)
    latched = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, zero, zero,
                  QosLiveliness.AUTOMATIC, zero, False)
    src = tmp_path / "src"
    store = default_typestore()
    with Writer(src, version=9) as w:
        static = w.add_connection("/static_odom", "nav_msgs/msg/Odometry", typestore=store, offered_qos_profiles=(latched,))
        live = w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=store)
        for i in range(3):
            msg = Odometry()
            msg.header.stamp = ns_to_time(1_700_000_000_000_000_000 + i)
            for conn in (static, live):
                w.write(conn, 1_700_000_000_000_000_000 + i * 1000, serialize_message(msg))
    counters = _diag_counter(ros_env, "bag_player")
    spin = ros_env.spinner()
    player = ros_env.start("bag_player", {"bag": str(src), "rate": 100.0, "exit_when_done": False, "diagnostics_period_s": 0.1})
    wait_for(lambda: counters.get("published", 0) >= 6, 30, spin, "the bag played")
    got = {"/static_odom": [], "/odom": []}
    late = ros_env.node("late_listener")
    for topic in got:
        late.create_subscription(Odometry, topic, lambda m, t=topic: got[t].append(m.header.stamp.nanosec), qos_profile("reliable_history", 10))
    spin = ros_env.spinner()
    wait_for(lambda: len(got["/static_odom"]) == 3, 20, spin, "the latched messages")
    assert sorted(got["/static_odom"]) == sorted(1_700_000_000_000_000_000 % 10**9 + i for i in range(3))
    assert got["/odom"] == []
    assert ros_env.stop(player) == 0
