"""`ba-perception launch`: starts the graph, restarts a killed node, stops every node cleanly on SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for

pytestmark = pytest.mark.dds

LAUNCH = [str(Path(sys.prefix) / "bin" / "ba-perception"), "launch"]
GRAPH = ("detector_node", "track_buffer_node", "tracker_node", "visualizer_node", "latency_monitor")


def _pids(text: str, name: str) -> list[int]:
    return [int(p) for p in re.findall(rf"(?:started|restarted) {name} \(pid (\d+)\)", text)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _ready_listener(ros_env) -> dict[str, float]:
    """Names of the nodes that announced readiness (latched topic) -> when the test saw it."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from ba_perception.graph import READY_TOPIC
    from ba_perception.ros.params import qos_profile

    ready: dict[str, float] = {}
    node = ros_env.node("ready_listener")
    node.create_subscription(DiagnosticStatus, READY_TOPIC, lambda m: ready.setdefault(m.hardware_id, time.monotonic()),
                             qos_profile("reliable_history", 50))
    return ready


def test_launcher_restarts_killed_node_and_stops_on_sigint(ros_env, tmp_path):
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*LAUNCH, "--source", "none", "--only", "visualizer_node,latency_monitor"],
                                env=ros_env.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(_pids(log.read_text(), "latency_monitor")) == 1 and
                 len(_pids(log.read_text(), "visualizer_node")) == 1, 20, what="both nodes started")
        first = _pids(log.read_text(), "visualizer_node")[0]
        monitor = _pids(log.read_text(), "latency_monitor")[0]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "visualizer_node exited with -9; restart 1 in 1.00 s" in log.read_text(), 20, what="restart")
        wait_for(lambda: len(_pids(log.read_text(), "visualizer_node")) == 2, 20, what="a new visualizer_node")
        second = _pids(log.read_text(), "visualizer_node")[1]
        assert second != first and _alive(second)
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        assert not _alive(monitor) and not _alive(second)
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def _stop_times(text: str) -> dict[str, tuple[int, float]]:
    return {m[0]: (int(m[1]), float(m[2])) for m in re.findall(r"\[launch\] (\w+) stopped \(exit (-?\d+)\) after ([\d.]+) s", text)}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["launcher", "process_group"])
def test_graph_stops_cleanly_within_2_s(ros_env, tmp_path, how):
    """Every node of the graph exits 0 within 2 s of SIGINT and prints no traceback: SIGINT to the
    launcher, or to the whole process group (Ctrl-C in a terminal: every node gets it, then the
    launcher's own SIGINT a moment later)."""
    ready = _ready_listener(ros_env)
    spin = ros_env.spinner()
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*LAUNCH, "source:=none"], env=ros_env.env, stdout=out, stderr=subprocess.STDOUT,
                                process_group=0)
    try:
        wait_for(lambda: set(GRAPH) <= set(ready), 240, spin, "every node of the graph ready")
        if how == "launcher":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        text = log.read_text()
        stops = _stop_times(text)
        assert set(stops) == set(GRAPH), text
        for name, (code, took) in stops.items():
            assert code == 0, f"{name} exited {code}\n{text}"
            assert took < 2.0, f"{name} took {took:.2f} s to stop\n{text}"
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_bad_arguments_are_one_line_before_any_process(ros_env, tmp_path):
    cases = [(["--bag", "/nonexistent.mcap"], "does not exist"),
             (["source:=none", "lockstep:=maybe"], "lockstep:='maybe': expected true or false"),
             (["source:=none", "rviz:=true"], "rviz2 is not installed"),
             (["source:=none", "remap:=/a:=/b,/c"], "remap '/c': expected FROM:=TO"),
             (["source:=none", "sorce:=bag"], "unknown launch argument 'sorce'")]
    for argv, message in cases:
        out = subprocess.run([*LAUNCH, *argv], env=ros_env.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and message in out.stderr, (argv, out.stderr)
        assert "started" not in out.stdout
