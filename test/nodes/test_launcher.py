"""`ba-perception launch`: starts the graph, restarts a killed node, stops everything on SIGINT."""

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


def _pids(text: str, name: str) -> list[int]:
    return [int(p) for p in re.findall(rf"started {name} \(pid (\d+)\)", text)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_launcher_restarts_killed_node_and_stops_on_sigint(ros_env, tmp_path):
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.prefix) / "bin" / "ba-perception"), "launch", "--source", "none",
             "--only", "visualizer_node,latency_monitor"],
            env=ros_env.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(_pids(log.read_text(), "latency_monitor")) == 1 and
                 len(_pids(log.read_text(), "visualizer_node")) == 1, 20, what="both nodes started")
        first = _pids(log.read_text(), "visualizer_node")[0]
        monitor = _pids(log.read_text(), "latency_monitor")[0]
        time.sleep(1.5)  # past the respawn guard so the crash counts as a crash of a running node
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: "visualizer_node exited with -9; restart 1/5" in log.read_text(), 20, what="restart")
        wait_for(lambda: re.search(r"restart 1/5", log.read_text()) is not None, 5)
        children = [int(p) for p in subprocess.run(["pgrep", "-f", "visualizer_node --ros-args"], capture_output=True,
                                                    text=True).stdout.split()]
        assert any(p != first and _alive(p) for p in children), "no new visualizer_node process"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        elapsed = time.monotonic() - t0
        assert elapsed < 5.0, f"shutdown took {elapsed:.1f} s"
        assert not _alive(monitor)
        assert not any(_alive(p) for p in children)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_launcher_rejects_missing_bag(ros_env):
    out = subprocess.run([str(Path(sys.prefix) / "bin" / "ba-perception"), "launch", "--bag", "/nonexistent.mcap"],
                         env=ros_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "does not exist" in out.stderr
