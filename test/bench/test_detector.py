"""bench detector memory run: RSS summary arithmetic, a leak is reported as growth, the CLI writes the run."""

from __future__ import annotations

import json
import mmap
from types import SimpleNamespace

import numpy as np
import pytest

from ba_perception.bench.detector import memory_run, rss_summary
from ba_perception.cli import main


def test_rss_summary_hand_computed():
    # After the 50-frame warm-up: 110, 112, 114 MB at frames 50, 100, 150 -> +4 MB, slope 2 MB / 50 frames = 40 / 1000.
    s = rss_summary([(1, 100.0), (50, 110.0), (100, 112.0), (150, 114.0)], warmup_frames=50)
    assert (s["first_mb"], s["start_mb"], s["start_frame"], s["end_mb"], s["end_frame"]) == (100.0, 110.0, 50, 114.0, 150)
    assert s["peak_mb"] == 114.0 and s["growth_mb"] == pytest.approx(4.0)
    assert s["slope_mb_per_1000_frames"] == pytest.approx(40.0)
    assert s["under_limit"] and not s["no_growth"]  # 40 MB per 1000 frames is growth
    flat = rss_summary([(1, 1000.0), (50, 1600.0), (100, 1601.0), (150, 1600.5)], warmup_frames=50)
    assert flat["no_growth"] and not flat["under_limit"] and flat["peak_mb"] == 1601.0
    with pytest.raises(ValueError):
        rss_summary([], 50)


class _FakeDetector:
    """Returns 3 detections per frame; optionally keeps 1 MiB of written memory per frame (a leak).

    The leak is an anonymous mapping, so its pages are new to the process whatever earlier tests
    freed (a numpy buffer could reuse heap that an earlier test grew, and RSS would not move)."""

    def __init__(self, leak: bool) -> None:
        self.leak = leak
        self.kept: list[np.ndarray] = []

    def detect(self, image, K):
        if self.leak:
            page = mmap.mmap(-1, 2**20)
            page.write(b"\x01" * 2**20)  # 1 MiB, pages touched
            self.kept.append(page)
        return SimpleNamespace(detections=[0, 1, 2])


def test_memory_run_reports_a_leak_as_growth_and_a_steady_detector_as_flat():
    images = [np.zeros((4, 4, 3), np.uint8)] * 2
    K = np.eye(3)
    leaky = memory_run(_FakeDetector(leak=True), images, K, frames=120, every=20)
    assert [f for f, _ in leaky["samples"]] == [1, 20, 40, 60, 80, 100, 120]
    s = leaky["summary"]
    assert s["growth_mb"] >= 80.0 and s["slope_mb_per_1000_frames"] >= 800.0 and not s["no_growth"]
    assert leaky["detections_per_frame"] == 3.0
    steady = memory_run(_FakeDetector(leak=False), images, K, frames=120, every=20)
    assert steady["summary"]["no_growth"] and abs(steady["summary"]["growth_mb"]) < 5.0


def test_memory_only_needs_frames(tmp_path, capsys):
    assert main(["bench", "detector", "--memory-only", "--out", str(tmp_path / "x.json")]) == 2
    assert "--memory-frames" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_detector_memory_run_writes_json(tmp_path):
    out = tmp_path / "det.json"
    rc = main(["bench", "detector", "--memory-frames", "40", "--memory-every", "10", "--memory-images", "2",
               "--memory-only", "--threads", "1", "--out", str(out)])
    assert rc == 0
    mem = json.loads(out.read_text())["memory"]
    assert [f for f, _ in mem["samples"]] == [1, 10, 20, 30, 40]
    assert mem["images"] == 2 and mem["summary"]["peak_mb"] >= mem["summary"]["start_mb"] > 0


@pytest.mark.slow
@pytest.mark.dds
def test_bench_detector_node_memory_run_counts_node_outputs(tmp_path):
    from ba_perception.data.bag import BagWriter
    from ba_perception.data.world import WorldConfig, render_sequence

    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        for frame in render_sequence(WorldConfig(preset="urban", seed=3, width=320, height=96, n_frames=4)):
            w.write(frame)
    out = tmp_path / "det.json"
    rc = main(["bench", "detector", "--node-frames", "10", "--memory-every", "5", "--node-bag", str(bag),
               "--memory-only", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    node = data["node_memory"]
    assert data["memory"] is None
    # 10 outputs from a 4-frame bag: the player looped and every restamped frame came out of the node
    assert node["frames"] == 10 and [f for f, _ in node["samples"]] == [1, 5, 10]
    assert node["summary"]["peak_mb"] > 50  # a real process holding the network
