"""Fuzz every node's real callbacks in-process with random and adversarial messages (issue 21).

Each test builds one node with real rclpy, then feeds a seeded stream in which a quarter of the
messages are valid, most are a valid message with one to three fields made adversarial (NaN, inf,
huge, negative, empty, max-length, absurd stamps, wrong encodings, mismatched step, giant stage
lists), and the rest are random in every field. Asserted for every message: no exception escapes
(not even into the guard, which would count ``rejected.callback_error``); a frame input either
produces an output or increments a counted rejection; per-object drops add up; every published
float is finite; internal state stays within its documented bounds and RSS growth after warm-up is
bounded. ``FUZZ_SCALE`` (default 1) scales the message counts; the counts at scale 1 total more than
10,000 messages.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from fuzz.harness import (ENCODINGS, Harness, RosContext, camera_info, compressed, detections, image, observations,
                          odometry, rss_mb, tracks)
from fuzz.msggen import Fuzzer, nonfinite

pytestmark = pytest.mark.slow  # about 3 minutes on a 2-core machine at FUZZ_SCALE=1

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
RSS_GROWTH_MB = 150.0  # after warm-up; the leaks this guards against grew by gigabytes
_domains = itertools.count(40 + (os.getpid() * 11) % 100)


def n_msgs(n: int) -> int:
    return max(20, int(n * SCALE))


@pytest.fixture
def ctx():
    c = RosContext(10 + next(_domains) % 200)
    yield c
    c.close()


def _pick(fz: Fuzzer, valid, cls):
    """Valid (25 %), one valid message with adversarial fields (60 %), or all-random (15 %)."""
    r = fz.rng.random()
    if r < 0.25:
        return valid
    if r < 0.85:
        return fz.mutate(valid)[0]
    return fz.random(cls)


class RssWatch:
    """RSS after warm-up vs at the end."""

    def __init__(self, n: int) -> None:
        self.mark = max(1, n // 5)
        self.start = None

    def tick(self, i: int) -> None:
        if i == self.mark:
            self.start = rss_mb()

    def check(self) -> None:
        growth = rss_mb() - self.start
        assert growth < RSS_GROWTH_MB, f"RSS grew by {growth:.0f} MiB after warm-up"


def _assert_finite(h: Harness) -> None:
    for topic, msgs in h.published.items():
        for m in msgs[-3:]:
            bad = nonfinite(m)
            assert not bad, f"{topic} published non-finite values: {bad[:5]}"


def test_tracker_node_detections(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode
    from ba_perception_msgs.msg import Detection3DArray

    node = ctx.create(TrackerNode, input_type="detections", first_track_id=1, max_detections=64, max_tracks=128)
    h = Harness(node, node.on_input, node.worker)
    topic, out = node.p["input_topic"], node.p["output_topic"]
    fz, rng = Fuzzer(1), np.random.default_rng(1)
    n = n_msgs(2000)
    rss = RssWatch(n)
    for k in range(n):
        rss.tick(k)
        msg = _pick(fz, detections(k, rng, int(rng.integers(0, 6))), Detection3DArray)
        c = node.counters
        before = (h.n_out(out), h.rejections(), node.tracker.counters["detections_in"],
                  c["rejected.bad_pose"] + c["rejected.too_many_objects"])
        h.feed(topic, msg)
        assert h.callback_errors() == 0
        outs, rej = h.n_out(out) - before[0], h.rejections() - before[1]
        assert outs + rej >= 1, f"message {k} neither produced output nor was counted"
        if outs:
            bad = nonfinite(h.published[out][-1])
            assert not bad, f"message {k}: non-finite output {bad[:5]}"
            # Every object is either handed to the tracker or counted as rejected.
            dropped = c["rejected.bad_pose"] + c["rejected.too_many_objects"] - before[3]
            assert len(msg.detections) == node.tracker.counters["detections_in"] - before[2] + dropped
        assert len(node.tracker.tracks) <= 128
        assert node.tracker.counters["frames"] == node.counters["tracker.frames"] or node.tracker.counters["frames"] == 0
    rss.check()
    assert h.n_out(out) > n // 5, "hardly any frame was processed: the fuzz stream is too hostile to test anything"


def test_tracker_node_observations_and_odometry(ctx):
    from nav_msgs.msg import Odometry

    from ba_perception.nodes.tracker_node import TrackerNode
    from ba_perception_msgs.msg import ObjectObservationArray

    node = ctx.create(TrackerNode, input_type="observations", input_topic="/obs", first_track_id=1, ego_wait_s=0.0,
                      max_detections=64)
    h = Harness(node, node.on_input, node.worker)
    out = node.p["output_topic"]
    fz, rng = Fuzzer(2), np.random.default_rng(2)
    n = n_msgs(1500)
    rss = RssWatch(n)
    for k in range(n):
        rss.tick(k)
        h.feed("/odom", _pick(fz, odometry(k), Odometry))
        msg = _pick(fz, observations(k, rng, int(rng.integers(0, 5))), ObjectObservationArray)
        before = (h.n_out(out), h.rejections())
        h.feed("/obs", msg)
        assert h.callback_errors() == 0
        assert h.n_out(out) - before[0] + h.rejections() - before[1] >= 1, f"message {k} not accounted for"
        _assert_finite(h)
        assert len(node.ego.buffer) <= node.ego.buffer.capacity
    rss.check()
    assert h.n_out(out) > n // 5


def test_visualizer_node(ctx):
    from sensor_msgs.msg import Image

    from ba_perception.nodes.visualizer_node import VisualizerNode
    from ba_perception_msgs.msg import Track3DArray

    node = ctx.create(VisualizerNode, qos="reliable", max_objects=32)
    h = Harness(node)
    fz, rng = Fuzzer(3), np.random.default_rng(3)
    n = n_msgs(2500)
    rss = RssWatch(n)
    markers, overlay = node.p["marker_topic"], node.p["overlay_topic"]
    for k in range(n):
        rss.tick(k)
        msg = _pick(fz, tracks(k, rng, int(rng.integers(0, 5))), Track3DArray)
        if k % 4 == 0:  # an overlay pair: the image first, then the tracks with the same stamp
            img = _pick(fz, image(k, rng, encoding=ENCODINGS[k % len(ENCODINGS)]), Image) if k % 8 else image(k, rng)
            img.header.stamp = msg.header.stamp
            h.feed(node.p["image_topic"], img)
        c = node.counters
        before = (h.n_out(markers), h.rejections(), c["rejected.bad_box"] + c["rejected.too_many_objects"])
        h.feed(node.p["input_topic"], msg)
        assert h.callback_errors() == 0
        assert h.n_out(markers) - before[0] == 1, f"message {k}: no markers"
        # every object is drawn (a LINE_LIST marker) or counted
        drawn = sum(m.ns == "boxes" for m in h.published[markers][-1].markers)
        assert drawn + c["rejected.bad_box"] + c["rejected.too_many_objects"] - before[2] == len(msg.tracks)
        bad = nonfinite(h.published[markers][-1])
        assert not bad, f"message {k}: non-finite marker values {bad[:5]}"
        assert len(node.sync.queues[0]) <= node.sync.queue_size and len(node.sync.queues[1]) <= node.sync.queue_size
    rss.check()
    assert h.n_out(overlay) > n // 40, "hardly any overlay was drawn"


def test_visualizer_node_detections(ctx):
    from ba_perception.nodes.visualizer_node import VisualizerNode
    from ba_perception_msgs.msg import Detection3DArray

    node = ctx.create(VisualizerNode, input_type="detections", input_topic="/dets", image_topic="")
    h = Harness(node)
    fz, rng = Fuzzer(4), np.random.default_rng(4)
    for k in range(n_msgs(500)):
        msg = _pick(fz, detections(k, rng, int(rng.integers(0, 5))), Detection3DArray)
        before = h.n_out()
        h.feed("/dets", msg)
        assert h.callback_errors() == 0 and h.n_out() == before + 1
        _assert_finite(h)


def test_latency_monitor(ctx):
    from rclpy.serialization import serialize_message

    from ba_perception.nodes.latency_monitor import LatencyMonitor
    from ba_perception.ros.node import make_stage
    from ba_perception_msgs.msg import Track3DArray

    node = ctx.create(LatencyMonitor, max_series=48)
    h = Harness(node)
    fz, rng = Fuzzer(5), np.random.default_rng(5)
    n = n_msgs(2500)
    rss = RssWatch(n)
    for k in range(n):
        rss.tick(k)
        msg = _pick(fz, tracks(k, rng, 1), Track3DArray)
        if k % 50 == 7:  # a giant list of made-up stage names
            msg.trace = [make_stage(f"stage_{k}_{i}", 1, 2, 3) for i in range(2000)]
        if k % 3 == 0:
            raw = serialize_message(image(k, rng, 8, 6)) if k % 2 else bytes(rng.integers(0, 255, 20, dtype=np.uint8))
            counted = node.counters["frames_in"] + h.rejections()
            h.feed(node.p["input_topic"], raw)
            assert node.counters["frames_in"] + h.rejections() >= counted + 1, "input frame neither counted nor rejected"
        before = (node.counters["frames_out"], h.rejections())
        h.feed(node.p["output_topic"], msg)
        assert h.callback_errors() == 0
        assert node.counters["frames_out"] == before[0] + 1
        if len(msg.trace) > node.p["max_trace_len"]:
            assert h.rejections() > before[1]
        assert len(node.stats.samples) <= 48
        assert len(node.pending) <= 4 * node.p["window"]
    node.report()
    _assert_finite(h)
    rss.check()


@pytest.mark.parametrize("transport,count", [("raw", 300), ("compressed", 100)])
def test_detector_node(ctx, transport, count):
    from sensor_msgs.msg import CameraInfo

    from ba_perception.nodes.detector_node import DetectorNode

    node = ctx.create(DetectorNode, backend="onnxruntime", threads=1, image_transport=transport,
                      max_decoded_pixels=640 * 480)
    h = Harness(node, node.on_frame, node.input.worker)
    fz, rng = Fuzzer(6 if transport == "raw" else 7), np.random.default_rng(6)
    out = node.p["output_topic"]
    image_topic = node.p["image_topic"] + ("/compressed" if transport == "compressed" else "")
    n = n_msgs(count)
    for k in range(n):
        if transport == "raw":
            img = image(k, rng, encoding=ENCODINGS[k % len(ENCODINGS)])
        else:
            img = compressed(k, rng, "jpeg" if k % 2 else "png")
        img = _pick(fz, img, type(img))
        info = _pick(fz, camera_info(k), CameraInfo)
        if fz.rng.random() < 0.8:
            info.header.stamp = img.header.stamp
        queued = sum(map(len, node.input.sync.queues))
        before = (h.n_out(out), h.rejections())
        h.feed(node.p["camera_info_topic"], info)
        h.feed(image_topic, img)
        assert h.callback_errors() == 0
        delta = h.n_out(out) - before[0] + h.rejections() - before[1] + sum(map(len, node.input.sync.queues)) - queued
        assert delta >= 1, f"pair {k} neither produced output, nor was counted, nor is waiting for a partner"
        _assert_finite(h)
    assert h.n_out(out) > n // 10


@pytest.fixture(scope="module")
def track_buffer_run():
    """One fuzz stream through track_buffer_node; returns the problems found, by property."""
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    from ba_perception.nodes.track_buffer_node import TrackBufferNode
    from ba_perception_msgs.msg import ObjectObservationArray

    c = RosContext(10 + next(_domains) % 200)
    problems: dict[str, list[str]] = {"exception": [], "accounting": [], "finite": [], "memory": []}
    try:
        node = c.create(TrackBufferNode, ego_wait_s=0.0, max_iterations=3, window=4, static_window=0)
        h = Harness(node, node.on_input, node.worker)
        out = node.p["output_topic"]
        fz, rng = Fuzzer(8), np.random.default_rng(8)
        n = n_msgs(700)
        rss = RssWatch(n)
        for k in range(n):
            rss.tick(k)
            before = (h.n_out(out), h.rejections())
            try:
                h.feed("/odom", _pick(fz, odometry(k), Odometry))
                img = _pick(fz, image(k, rng, 640, 192, ENCODINGS[k % len(ENCODINGS)]), Image)
                h.feed(node.p["image_topic"], img)
                msg = _pick(fz, observations(k, rng, int(rng.integers(0, 4))), ObjectObservationArray)
                before = (h.n_out(out), h.rejections())
                h.feed(node.p["input_topic"], msg)
            except Exception as err:  # noqa: BLE001 - collected, asserted per property below
                problems["exception"].append(f"message {k}: {type(err).__name__}: {err}")
                continue
            if h.callback_errors():
                problems["exception"].append(f"message {k}: rejected.callback_error")
            if h.n_out(out) - before[0] + h.rejections() - before[1] < 1:
                problems["accounting"].append(f"message {k} neither produced output nor was counted")
            for m in h.published[out][before[0]:]:
                problems["finite"] += [f"message {k}: {p}" for p in nonfinite(m)[:2]]
        try:
            rss.check()
        except AssertionError as err:
            problems["memory"].append(str(err))
    finally:
        c.close()
    return problems


@pytest.mark.parametrize("prop", [
    "exception",
    "accounting",
    "finite",
    "memory",
])
def test_track_buffer_node(track_buffer_run, prop):
    assert not track_buffer_run[prop], f"{len(track_buffer_run[prop])} problems: {track_buffer_run[prop][:5]}"
