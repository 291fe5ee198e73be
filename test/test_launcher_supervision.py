"""Launcher supervision: a finished bag player stops the graph (after the drain delay), a failed one at once."""

from __future__ import annotations

import sys
import time

from ba_perception.graph import NodeSpec
from ba_perception.launcher import Launcher

PLAYER = NodeSpec("bag_player", "bag_player", respawn=False, shutdown_on_exit=True)
WORKER = NodeSpec("worker", "worker", respawn=False)
SLEEP_30 = [sys.executable, "-c", "import time; time.sleep(30)"]


def _launcher(player_exit: int, drain_s: float) -> Launcher:
    launcher = Launcher([], {}, None, [], [], log=lambda _msg: None, drain_s=drain_s)
    # plain processes stand in for the node executables: the supervision does not care what runs
    launcher.cmds = [(PLAYER, [sys.executable, "-c", f"raise SystemExit({player_exit})"]), (WORKER, SLEEP_30)]
    return launcher


def test_finished_player_lets_the_graph_drain_then_stops_it():
    launcher = _launcher(0, drain_s=1.5)
    t0 = time.monotonic()
    assert launcher.run() == 0
    took = time.monotonic() - t0
    assert 1.5 <= took < 10.0  # drained, then the sleeping worker was stopped (not waited for)
    assert all(r.proc.poll() is not None for r in launcher.running)


def test_failed_player_stops_the_graph_at_once_with_an_error():
    launcher = _launcher(3, drain_s=20.0)
    t0 = time.monotonic()
    assert launcher.run() == 1
    assert time.monotonic() - t0 < 10.0
    assert all(r.proc.poll() is not None for r in launcher.running)


def test_crashing_node_is_restarted_with_growing_back_off_and_never_given_up():
    """A node that keeps crashing is restarted more than 5 times, each wait twice the one before
    (up to the cap); crashes older than the window no longer count."""
    lines: list[str] = []
    crasher = NodeSpec("crasher", "crasher", respawn=True)
    launcher = Launcher([], {}, None, [], [], log=lines.append, respawn_delay_s=0.02, respawn_max_delay_s=0.16,
                        respawn_window_s=30.0)
    launcher.cmds = [(crasher, [sys.executable, "-c", "raise SystemExit(3)"])]
    launcher.start()
    try:
        deadline = time.monotonic() + 60.0
        while sum("restarted crasher" in line for line in lines) < 7 and time.monotonic() < deadline:
            assert launcher.poll()
            time.sleep(0.005)
    finally:
        launcher.shutdown()
    delays = [float(line.split(" in ")[1].split(" s")[0]) for line in lines if "exited with 3; restart" in line]
    assert delays[:7] == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16, 0.16]
    r = launcher.running[0]
    assert r.restarts >= 7
    # after a quiet window the back-off starts over
    assert launcher.respawn_delay(r, time.monotonic() + 31.0) == 0.02
