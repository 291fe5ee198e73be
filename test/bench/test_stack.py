"""bench stack: the peak-throughput search logic, and one real run of the graph over DDS on a tiny bag."""

from __future__ import annotations

import json

import pytest

from ba_perception.bench.stack import next_peak_rate, sustained
from ba_perception.cli import main


def _run(rate: float, f_in: int, f_out: int) -> dict:
    return {"rate_hz": rate, "frames_in": f_in, "frames_out": f_out, "drop_fraction": (f_in - f_out) / f_in if f_in else 1.0}


def test_sustained_needs_input_and_few_drops():
    assert sustained(_run(10, 100, 96), 0.05)
    assert not sustained(_run(10, 100, 95), 0.05)  # exactly 5 % is not "< 5 %"
    assert not sustained(_run(10, 0, 0), 0.05)  # no input is a failed run, not a perfect one


def test_peak_search_bisects_between_best_pass_and_first_fail():
    runs = [_run(5, 50, 50), _run(10, 100, 99), _run(15, 150, 120)]
    assert next_peak_rate(runs, 0.05, 30.0) == 12.5
    runs.append(_run(12.5, 125, 125))
    assert next_peak_rate(runs, 0.05, 30.0) == 13.75
    # everything passes: try twice the best, capped at max_rate; at the cap, stop
    assert next_peak_rate([_run(5, 50, 50), _run(10, 100, 100)], 0.05, 30.0) == 20.0
    assert next_peak_rate([_run(30, 300, 300)], 0.05, 30.0) is None
    # nothing passes: search below the lowest failing rate
    assert next_peak_rate([_run(5, 50, 10), _run(10, 100, 5)], 0.05, 30.0) == 2.5
    # interval already narrow: stop
    assert next_peak_rate([_run(10, 100, 100), _run(10.5, 105, 60)], 0.05, 30.0) is None


@pytest.mark.slow
@pytest.mark.dds
def test_bench_stack_runs_the_graph_and_reports(tmp_path):
    out = tmp_path / "stack.json"
    rc = main(["bench", "stack", "--frames", "24", "--width", "320", "--height", "96", "--rates", "4", "--seconds", "3",
               "--min-frames", "12", "--warmup", "2", "--peak-steps", "0", "--drain", "2",
               "--set", "track_buffer_node.max_iterations:=3",
               "--cache", str(tmp_path / "cache"), "--out", str(out), "--plot", str(tmp_path / "stack.png")])
    assert rc == 0
    data = json.loads(out.read_text())
    (r,) = data["runs"]
    assert r["rate_hz"] == 4.0 and r["frames_target"] == 12
    assert 12 <= r["frames_in"] <= 13  # stopped after the planned frames (one more may slip out before SIGINT)
    assert 1 <= r["frames_out"] <= r["frames_in"]
    # every output the monitor timed is one the stamp matching counted (a warm-up straggler at most extra)
    assert abs(r["stages"]["end_to_end"]["count"] - r["frames_out"]) <= 1
    for stage in ("detector", "track_buffer", "tracker", "end_to_end"):
        s = r["stages"][stage]
        assert s["count"] >= 1 and 0 < s["p50_ms"] <= s["p99_ms"]
        assert s["jitter_ms"] == pytest.approx(s["p99_ms"] - s["p50_ms"])
    # end to end covers the three stages' compute
    e2e = r["stages"]["end_to_end"]["max_ms"]
    assert e2e >= r["stages"]["detector"]["p50_ms"] * 0.99
    for node in ("detector_node", "track_buffer_node", "tracker_node"):
        assert r["processes"][node]["samples"] >= 1 and r["processes"][node]["rss_max_mb"] > 20
        assert r["processes"][node]["cpu_s"] > 0  # the node did work (a dead sampler reads 0)
    assert r["processes"]["detector_node"]["cpu_ms_per_played_frame"] > 1  # the network ran on every frame
    assert data["host"]["cpu_count"] >= 1 and data["config"]["discovery_range"] == "LOCALHOST"
    assert (tmp_path / "stack.png").stat().st_size > 10_000
    assert "max_iterations:=3" in " ".join(data["config"]["overrides"])
