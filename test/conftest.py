"""Shared fixtures: an isolated ROS 2 environment per test and helpers to run nodes as processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.prefix) / "bin"
_domains = itertools.count((os.getpid() * 7) % 150)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, spin: Callable[[], None] | None = None,
             what: str = "condition") -> None:
    """Poll ``cond`` (spinning ``spin`` in between) until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if spin is not None:
            spin()
        else:
            time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")


def publish_and_wait(pub, msg, received: list, spin: Callable[[], None], timeout: float = 30.0,
                     what: str = "an output") -> object:
    """Lockstep feeding: publish ``msg`` and wait until ``received`` (a subscription's list) grows.

    Returns the newest received message. Fails the test after ``timeout`` seconds.
    """
    n = len(received)
    pub.publish(msg)
    wait_for(lambda: len(received) > n, timeout, spin, what)
    return received[-1]


def stack_params(node_name: str, **overrides: object) -> dict:
    """The parameters ``node_name`` runs with from the shipped config/stack.yaml: its declared defaults,
    the file's values over them, and ``overrides`` over both."""
    from ba_perception.graph import default_params_file, node_parameters
    from ba_perception.params_doc import node_params

    declared = {s.name: s.default for s in node_params(node_name)}
    return {**declared, **node_parameters(default_params_file(), node_name), **overrides}


class RosEnv:
    """A private DDS domain on localhost, a temp ROS_HOME, and processes started in it."""

    def __init__(self, tmp: Path) -> None:
        self.domain_id = 10 + next(_domains) % 150
        self.env = dict(os.environ)
        self.env.update(
            ROS_DOMAIN_ID=str(self.domain_id),
            ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
            ROS_HOME=str(tmp / "ros_home"),
            ROS_LOG_DIR=str(tmp / "ros_log"),
            FASTRTPS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_profile.xml"),
            FASTDDS_DEFAULT_PROFILES_FILE=str(ROOT / "config" / "fastdds_profile.xml"),
            PYTHONUNBUFFERED="1",
        )
        self.procs: list[subprocess.Popen] = []
        self.tmp = tmp
        self.context = None
        self.nodes: list = []

    def start(self, executable: str, params: dict | None = None, remaps: dict | None = None,
              args: list[str] | None = None) -> subprocess.Popen:
        """Start ``executable`` (a console script of this package) with ROS parameters."""
        cmd = [str(BIN / executable), *(args or []), "--ros-args"]
        for k, v in (params or {}).items():
            cmd += ["-p", f"{k}:={_yaml(v)}"]
        for k, v in (remaps or {}).items():
            cmd += ["-r", f"{k}:={v}"]
        log = open(self.tmp / f"{executable}-{len(self.procs)}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def node(self, name: str):
        """An in-process rclpy node on this domain (for subscribing/publishing from the test)."""
        import rclpy

        if self.context is None:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
            os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = self.env["FASTRTPS_DEFAULT_PROFILES_FILE"]
            self.context = rclpy.Context()
            rclpy.init(context=self.context, domain_id=self.domain_id)
        node = rclpy.create_node(name, context=self.context)
        self.nodes.append(node)
        return node

    def spinner(self, timeout: float = 0.02) -> Callable[[], None]:
        """A function that spins every in-process node once."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        ex = SingleThreadedExecutor(context=self.context)
        for n in self.nodes:
            ex.add_node(n)
        return lambda: ex.spin_once(timeout_sec=timeout)

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
        """SIGINT a process and wait for it; kill it if it hangs. Returns its exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        for p in self.procs:
            self.stop(p, timeout=5.0)
        for n in self.nodes:
            n.destroy_node()
        if self.context is not None:
            self.context.try_shutdown()

    def logs(self) -> str:
        return "\n".join(f"--- {p.args[0]}\n" + Path(p.log_path).read_text()[-3000:] for p in self.procs)


def _yaml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml(x) for x in v) + "]"
    if isinstance(v, str):
        return v if v else "''"
    return repr(v)


@pytest.fixture
def ros_env(tmp_path: Path, request) -> Iterator[RosEnv]:
    """Isolated ROS 2 environment; on failure the node logs are attached to the report."""
    env = RosEnv(tmp_path)
    try:
        yield env
    finally:
        env.close()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(env.logs())


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def tmp_session() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def write_camera_bag(path: Path, n_frames: int = 20, width: int = 64, height: int = 48, rate_hz: float = 10.0,
                     storage: str = "mcap") -> list[tuple[str, int, bytes]]:
    """Write a rosbag2 with Image, CameraInfo and Odometry per frame (rclpy-serialized CDR).

    Returns ``[(topic, bag_time_ns, cdr), ...]`` in write order.
    """
    import numpy as np
    from nav_msgs.msg import Odometry
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ba_perception.ros.bag_types import default_typestore
    from ba_perception.ros.convert import k_to_camera_info
    from ba_perception.ros.image import numpy_to_image
    from ba_perception.ros.node import ns_to_time

    store = default_typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    rng = np.random.default_rng(0)
    K = np.array([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]])
    written = []
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {
            "/camera/image_raw": w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store),
            "/camera/camera_info": w.add_connection("/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=store),
            "/odom": w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=store),
        }
        for i in range(n_frames):
            t = 1_700_000_000_000_000_000 + int(i * 1e9 / rate_hz)
            img = numpy_to_image(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "rgb8")
            img.header.stamp, img.header.frame_id = ns_to_time(t), "camera_optical"
            info = k_to_camera_info(K, width, height, img.header)
            odom = Odometry()
            odom.header.stamp, odom.header.frame_id, odom.child_frame_id = ns_to_time(t), "odom", "base_link"
            odom.pose.pose.position.x = float(i)
            odom.pose.pose.orientation.w = 1.0
            for topic, msg in (("/camera/image_raw", img), ("/camera/camera_info", info), ("/odom", odom)):
                cdr = serialize_message(msg)
                w.write(conns[topic], t, cdr)
                written.append((topic, t, cdr))
    return written


def export_kitti_sequence(root: Path, n: int, width: int, height: int, seed: int = 11) -> list:
    """Render ``n`` urban world frames and export them with KittiWriter as sequence 0000 under ``root``."""
    from ba_perception.data.kitti import KittiWriter
    from ba_perception.data.world import World, WorldConfig

    cfg = WorldConfig(preset="urban", seed=seed, width=width, height=height, n_frames=n)
    with World(cfg) as world, KittiWriter(root, seq=0) as kw:
        frames = [world.render(k) for k in range(n)]
        for f in frames:
            kw.write(f)
    return frames


@pytest.fixture(scope="module")
def small_kitti_sequence(tmp_path_factory):
    """``(KITTI root, world frames)`` of a 20-frame 320x96 export."""
    root = tmp_path_factory.mktemp("kitti")
    return root, export_kitti_sequence(root, 20, 320, 96)
