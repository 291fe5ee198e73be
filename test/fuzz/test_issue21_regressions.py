"""The reproductions of issue 21 (D1-D12) as named regression tests, on the real nodes in-process.

Each test builds the failing input of the issue and asserts what a user relies on now: the node
survives, the bad input is rejected with a named counter, the rest of the frame goes on, nothing
non-finite is published, and resources stay bounded. (D7 and the track-buffer halves of D9/D10 are
owned by the track-buffer refactor; the fuzz suite's ``test_track_buffer_node`` covers them.)
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from fuzz.harness import (Harness, RosContext, camera_info, detections, image, observations, odometry, stamp,
                          tracks)
from fuzz.msggen import nonfinite

_domains = itertools.count(60 + (os.getpid() * 13) % 100)


@pytest.fixture
def ctx():
    c = RosContext(10 + next(_domains) % 200)
    yield c
    c.close()


# ---------------------------------------------------------------------------- D1
def test_d1_overlay_draws_boxes_projecting_beyond_int32_or_nan():
    from ba_perception.core.overlay import draw_boxes

    rgb = np.zeros((48, 64, 3), np.uint8)
    corners = np.array([[[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (0.5, 1e-3 + 0.1)]])
    huge_k = np.array([[1e12, 0, 32], [0, 1e12, 24], [0, 0, 1]])
    out = draw_boxes(rgb, corners, huge_k, [1], ["1 car"])
    assert out.shape == rgb.shape and out.any(), "clipped edges are still drawn"
    nan_k = np.array([[50.0, 0, math.nan], [0, 50.0, 24], [0, 0, 1]])
    assert draw_boxes(rgb, corners, nan_k, [1], ["1 car"]).shape == rgb.shape


def test_d1_visualizer_survives_the_issue_tracks(ctx):
    from ba_perception.nodes.visualizer_node import VisualizerNode

    node = ctx.create(VisualizerNode, qos="reliable")
    h = Harness(node)
    rng = np.random.default_rng(0)
    cases = []
    m = tracks(1, rng)
    m.k[0] = m.k[4] = 1e12  # projections beyond int32
    cases.append(m)
    m = tracks(2, rng)
    m.k[2] = math.nan  # cx = NaN
    cases.append(m)
    m = tracks(3, rng)
    m.tracks[0].track_id = 2**64 - 1  # Marker.id is int32
    cases.append(m)
    for k, msg in enumerate(cases):
        img = image(k, rng)
        img.header.stamp = msg.header.stamp
        h.feed(node.p["image_topic"], img)
        h.feed(node.p["input_topic"], msg)
    assert node.counters.get("rejected.callback_error", 0) == 0
    markers = h.published[node.p["marker_topic"]]
    assert len(markers) == 3 and len(h.published[node.p["overlay_topic"]]) == 3
    ids = {mk.id for mk in markers[2].markers if mk.ns == "boxes"}
    assert all(0 <= i < 2**31 for i in ids) and len(ids) == 3
    label = next(mk.text for mk in markers[2].markers if mk.ns == "labels")
    assert label.startswith(str(2**64 - 1)), "the label shows the full track id"


def test_d1_guard_counts_an_exception_in_any_callback(ctx):
    from std_msgs.msg import String

    from ba_perception.ros.node import PerceptionNode

    class Fragile(PerceptionNode):
        def __init__(self, **kw):
            super().__init__("fragile", **kw)
            self.create_subscription(String, "/in", lambda m: int(m.data), 10)

    node = ctx.create(Fragile)
    sub = next(s for s in node.subscriptions if s.topic_name == "/in")
    sub.callback(String(data="not a number"))
    sub.callback(String(data="12"))
    sub.callback(String(data="nan"))
    assert node.counters["rejected.callback_error"] == 2


# ---------------------------------------------------------------------------- D2
def _to_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """Pack RGB to 4:2:2 (BT.601, limited range, as OpenCV's YUV2RGB_UYVY / _YUY2 read it)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = 0.5 * (u[:, 0::2] + u[:, 1::2])
    v = 0.5 * (v[:, 0::2] + v[:, 1::2])
    out = np.empty(rgb.shape[:2] + (2,), np.float64)
    if order == "uyvy":
        out[:, 0::2, 0], out[:, 1::2, 0] = u, v
        out[:, :, 1] = y
    else:
        out[:, :, 0] = y
        out[:, 0::2, 1], out[:, 1::2, 1] = u, v
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world_frame():
    from ba_perception.data.world import World, WorldConfig

    with World(WorldConfig(preset="urban", seed=100001, n_frames=5)) as world:
        return world.render(4)


def _match(a, b) -> float:
    """Worst best-IoU of the 2D boxes of ObjectObservationArray ``a`` in ``b`` (same class), 1.0 if both empty."""
    from ba_perception.eval.detection_ap import iou_2d

    if not a.observations and not b.observations:
        return 1.0
    if not a.observations or not b.observations:
        return 0.0
    ba = np.array([list(o.box_2d) for o in a.observations], np.float64)
    bb = np.array([list(o.box_2d) for o in b.observations], np.float64)
    iou = iou_2d(ba, bb)
    same = np.array([[oa.class_label == ob.class_label for ob in b.observations] for oa in a.observations])
    return float(np.where(same, iou, 0.0).max(1).min())


def _scored(msg, min_score: float):
    """A copy of ObjectObservationArray ``msg`` with only the observations scored at least ``min_score``."""
    from ba_perception_msgs.msg import ObjectObservationArray

    return ObjectObservationArray(observations=[o for o in msg.observations if o.score >= min_score])


def test_d2_every_camera_encoding_gives_the_rgb8_detections(ctx, world_frame):
    from ba_perception.nodes.detector_node import DetectorNode
    from ba_perception.ros.convert import k_to_camera_info
    from ba_perception.ros.image import numpy_to_image, rgb_to_compressed

    raw = ctx.create(DetectorNode, backend="onnxruntime", threads=1, input_qos="reliable")
    comp = ctx.create(DetectorNode, backend="onnxruntime", threads=1, image_transport="compressed")
    hr, hc = Harness(raw, raw.on_frame, raw.input.worker), Harness(comp, comp.on_frame, comp.input.worker)
    rgb = world_frame.image
    h, w = rgb.shape[:2]
    gray = np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    k = itertools.count(1)

    def detect(hh, node, msg):
        s = next(k)
        msg.header.stamp = stamp(s)
        info = k_to_camera_info(world_frame.K, w, h)
        info.header.stamp = msg.header.stamp
        n = hh.n_out()
        hh.feed(node.p["camera_info_topic"], info)
        hh.feed(node.p["image_topic"] + ("/compressed" if node is comp else ""), msg)
        assert hh.n_out() == n + 1, f"no detections published for {msg.__class__.__name__}"
        return hh.published[node.p["output_topic"]][-1]

    ref = detect(hr, raw, numpy_to_image(rgb, "rgb8"))
    assert len(ref.observations) >= 1, "the rendered frame must have detections to compare"
    alpha = np.full((h, w, 1), 200, np.uint8)
    exact = {
        "bgr8": numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8"),
        "rgba8": numpy_to_image(np.concatenate([rgb, alpha], 2), "rgba8"),
        "bgra8": numpy_to_image(np.concatenate([rgb[..., ::-1], alpha], 2), "bgra8"),
    }
    for enc, msg in exact.items():
        got = detect(hr, raw, msg)
        assert [o.box_2d.tolist() for o in got.observations] == [o.box_2d.tolist() for o in ref.observations], enc
    assert raw.counters.get("rejected.processing_error", 0) == 0
    png = detect(hc, comp, rgb_to_compressed(rgb, "png"))
    assert [o.box_2d.tolist() for o in png.observations] == [o.box_2d.tolist() for o in ref.observations], "png"
    # Lossy or subsampled: the same objects, each box overlapping its rgb8 box by IoU > 0.7 (measured 0.78-0.80).
    # Detections scored near the threshold may come and go with the pixel noise: compared are the
    # confident ones of each side (score >= 2x the threshold), which must all be found in the other.
    confident = 2 * raw.p["score_threshold"]
    for name, got in (("jpeg", detect(hc, comp, rgb_to_compressed(rgb, "jpeg", quality=95))),
                      ("yuv422", detect(hr, raw, numpy_to_image(_to_yuv422(rgb, "uyvy"), "yuv422"))),
                      ("yuv422_yuy2", detect(hr, raw, numpy_to_image(_to_yuv422(rgb, "yuyv"), "yuv422_yuy2")))):
        assert _match(_scored(ref, confident), got) > 0.7 and _match(_scored(got, confident), ref) > 0.7, name
        assert len(_scored(ref, confident).observations) >= 1, "the frame must have confident detections"
    # Mono cameras: the same detections as the rgb8 frame of the same grey image.
    ref_gray = detect(hr, raw, numpy_to_image(np.repeat(gray[..., None], 3, 2), "rgb8"))
    for enc, arr in (("mono8", gray), ("mono16", gray.astype(np.uint16) * 257)):
        got = detect(hr, raw, numpy_to_image(arr, enc))
        assert [o.box_2d.tolist() for o in got.observations] == [o.box_2d.tolist() for o in ref_gray.observations], enc
    assert comp.counters.get("rejected.processing_error", 0) == 0 and raw.counters.get("rejected.processing_error", 0) == 0


# ---------------------------------------------------------------------------- D3, D4, D5, D6
def test_d3_tracker_diagnostics_are_totals_not_sums_of_totals(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    node = ctx.create(TrackerNode, first_track_id=1)
    h = Harness(node, node.on_input, node.worker)
    rng = np.random.default_rng(0)
    for k in range(7):
        h.feed(node.p["input_topic"], detections(k, rng))
    assert node.counters["tracker.frames"] == 7
    assert node.counters["tracker.detections_in"] == 28


def test_d4_one_message_with_another_embedding_length_does_not_turn_appearance_off():
    from ba_perception.core.tracking import Detections, Tracker

    def frame(k, dim):
        c = np.array([[10.0 + 0.1 * k, 0.0, 0.0], [20.0, 5.0, 0.0]])
        emb = np.eye(dim)[:2]
        return Detections(c, np.zeros(2), np.tile([4.0, 1.8, 1.5], (2, 1)), ["car", "car"], embeddings=emb)

    tr = Tracker()
    tr.step(0, frame(0, 3))  # the poisoned first message of the issue
    for k in range(1, 12):
        tr.step(k * 100_000_000, frame(k, 64))
    # After EMB_DIM_SWITCH_FRAMES frames of the real length the tracker uses it again.
    before = tr.counters["missing_embedding"]
    tr.step(12 * 100_000_000, frame(12, 64))
    assert tr.counters["missing_embedding"] == before
    assert tr._emb_dim == 64 and tr.tracks.has_emb.all()
    # One later message of another length is ignored per object, not adopted.
    tr.step(13 * 100_000_000, frame(13, 3))
    tr.step(14 * 100_000_000, frame(14, 64))
    assert tr._emb_dim == 64
    tr.reset()
    assert tr._emb_dim == 0, "reset() forgets the embedding length"


def test_d4_tracker_node_rejects_a_wrong_size_embedding_per_object(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    node = ctx.create(TrackerNode, first_track_id=1)
    h = Harness(node, node.on_input, node.worker)
    msg = detections(0, np.random.default_rng(0), n=4)
    msg.detections[1].embedding = [1.0, 0.0, 0.0]
    h.feed(node.p["input_topic"], msg)
    assert node.counters["rejected.embedding_size"] == 1
    assert node.tracker.counters["missing_embedding"] == 1  # the other three are used
    assert node.tracker._emb_dim == 8


def test_d5_ten_thousand_detections_are_bounded(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    node = ctx.create(TrackerNode, first_track_id=1, max_detections=200)
    h = Harness(node, node.on_input, node.worker)
    msg = detections(0, np.random.default_rng(0), n=1)
    msg.detections = [msg.detections[0]] * 10_000
    tracemalloc.start()
    h.feed(node.p["input_topic"], msg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB for one message"
    assert node.counters["rejected.too_many_objects"] == 10_000 - 200
    assert node.tracker.counters["detections_in"] == 200
    assert len(h.published[node.p["output_topic"]]) == 1


def test_d5_core_tracker_bounds_detections_and_tracks():
    from ba_perception.core.tracking import Detections, Tracker, TrackerConfig

    tr = Tracker(TrackerConfig(max_detections=50, max_tracks=30, n_init=1))
    n = 5000
    c = np.stack([np.arange(n) * 3.0, np.zeros(n), np.zeros(n)], 1)
    tr.step(0, Detections(c, np.zeros(n), np.ones((n, 3)), ["car"] * n, scores=np.linspace(0.3, 1, n)))
    assert tr.counters["detections_over_limit"] == n - 50
    assert len(tr.tracks) == 30 and tr.counters["births_over_limit"] == 20
    assert tr.tracks.score.min() > 0.98, "the highest-scored detections are kept"


def test_d6_track_ids_are_not_reused_after_a_restart(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    def run():
        node = ctx.create(TrackerNode, n_init=1)  # first_track_id 0: seeded from the wall clock
        h = Harness(node, node.on_input, node.worker)
        rng = np.random.default_rng(0)
        for k in range(5):
            h.feed(node.p["input_topic"], detections(k, rng, n=5))
        ids = {t.track_id for m in h.published[node.p["output_topic"]] for t in m.tracks}
        node.close()
        return ids

    first = run()
    second = run()  # the same scene after a "respawn": new objects must not get old ids
    assert first and second and min(second) > max(first)


# ---------------------------------------------------------------------------- D8
def test_d8_two_thousand_stage_names_do_not_stall_the_latency_monitor(ctx):
    from ba_perception.nodes.latency_monitor import LatencyMonitor
    from ba_perception.nodes.tracker_node import TrackerNode
    from ba_perception.ros.node import MAX_TRACE_STAGES, make_stage

    mon = ctx.create(LatencyMonitor)
    h = Harness(mon)
    rng = np.random.default_rng(0)
    msg = tracks(0, rng)
    msg.trace = [make_stage(f"s{i}", 1, 2, 3) for i in range(2000)]
    h.feed(mon.p["output_topic"], msg)
    for k in range(1, 300):
        h.feed(mon.p["output_topic"], tracks(k, rng))
    assert mon.counters["frames_out"] == 300
    assert len(mon.stats.samples) <= mon.p["max_series"]
    assert mon.counters["rejected.trace_too_long"] == 1
    assert {"detector", "tracker"} <= set(mon.stats.samples), "the real stages are still measured"
    # Upstream: the tracker copies at most MAX_TRACE_STAGES entries of its input's trace.
    tn = ctx.create(TrackerNode, first_track_id=1)
    ht = Harness(tn, tn.on_input, tn.worker)
    d = detections(0, rng)
    d.trace = [make_stage(f"s{i}", 1, 2, 3) for i in range(2000)]
    ht.feed(tn.p["input_topic"], d)
    out = ht.published[tn.p["output_topic"]][-1]
    assert len(out.trace) == MAX_TRACE_STAGES and out.trace[-1].stage == "tracker"


# ---------------------------------------------------------------------------- D9, D10, D11 (tracker side)
def test_d9_tracker_never_republishes_a_nonfinite_camera_pose_or_k(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    node = ctx.create(TrackerNode, first_track_id=1, n_init=1)
    h = Harness(node, node.on_input, node.worker)
    rng = np.random.default_rng(0)
    msg = detections(0, rng)
    msg.camera_pose.position.x = math.nan
    h.feed(node.p["input_topic"], msg)
    assert node.counters["rejected.camera_pose"] == 1 and not h.published[node.p["output_topic"]]
    msg = detections(1, rng)
    msg.k[0] = math.inf
    msg.detections[0].velocity.x = 1e308
    h.feed(node.p["input_topic"], msg)
    out = h.published[node.p["output_topic"]][-1]
    assert not nonfinite(out) and list(out.k) == [0.0] * 9 and node.counters["rejected.intrinsics"] == 1


def test_d10_drops_are_counted(ctx):
    from ba_perception.nodes.detector_node import DetectorNode
    from ba_perception.nodes.tracker_node import TrackerNode

    tn = ctx.create(TrackerNode, first_track_id=1)
    h = Harness(tn, tn.on_input, tn.worker)
    rng = np.random.default_rng(0)
    msg = detections(0, rng)
    msg.header.frame_id = "map"
    h.feed(tn.p["input_topic"], msg)
    assert tn.counters["rejected.frame_id"] == 1
    msg = detections(1, rng)
    msg.detections[0].size.x = math.nan  # the tracker's sanitising: counted and logged now
    h.feed(tn.p["input_topic"], msg)
    assert tn.counters["rejected.invalid_detection"] == 1
    # odometry going backwards
    obs = ctx.create(TrackerNode, input_type="observations", input_topic="/obs", first_track_id=1, ego_wait_s=0.0)
    ho = Harness(obs, obs.on_input, obs.worker)
    ho.feed("/odom", odometry(100))
    ho.feed("/odom", odometry(10))
    assert obs.counters["rejected.odom_backwards"] == 1
    # unpaired image / camera_info
    det = ctx.create(DetectorNode, backend="onnxruntime", threads=1, sync_queue_size=3)
    hd = Harness(det, det.on_frame, det.input.worker)
    for k in range(6):
        hd.feed(det.p["image_topic"], image(k, rng))  # no camera_info ever
    assert det.counters["rejected.unpaired"] == 3


def test_d11_intrinsics_ranges_and_zero_quaternion_objects(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode
    from ba_perception.ros.convert import InputError, camera_info_to_k

    for f in (1e300, 1e-300):
        info = camera_info(0)
        info.k[0] = info.k[4] = f
        with pytest.raises(InputError, match="focal lengths must be in"):
            camera_info_to_k(info)
    node = ctx.create(TrackerNode, first_track_id=1)
    h = Harness(node, node.on_input, node.worker)
    msg = detections(0, np.random.default_rng(0), n=3)
    q = msg.detections[1].pose.orientation
    q.x = q.y = q.z = q.w = 0.0
    h.feed(node.p["input_topic"], msg)
    assert node.counters["rejected.bad_pose"] == 1 and node.tracker.counters["detections_in"] == 2
    assert len(h.published[node.p["output_topic"]]) == 1, "the rest of the frame goes on"
    # observations path: the same per-object rejection
    obs = ctx.create(TrackerNode, input_type="observations", input_topic="/obs", first_track_id=1, ego_wait_s=0.0)
    ho = Harness(obs, obs.on_input, obs.worker)
    ho.feed("/odom", odometry(0))
    m = observations(0, np.random.default_rng(0), n=3)
    q = m.observations[0].pose.orientation
    q.x = q.y = q.z = q.w = 0.0
    ho.feed("/obs", m)
    assert obs.counters["rejected.bad_observation"] == 1 and obs.tracker.counters["detections_in"] == 2


# ---------------------------------------------------------------------------- D12
def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR says ``w`` x ``h`` RGB, with a tiny (truncated) image body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (3 * w + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_d12_decompression_bomb_is_rejected_from_its_header(ctx):
    from sensor_msgs.msg import CompressedImage

    from ba_perception.nodes.detector_node import DetectorNode
    from ba_perception.ros.image import ImageError, compressed_to_rgb

    bomb = CompressedImage(format="png", data=_png_header_only(16000, 16000))
    tracemalloc.start()
    with pytest.raises(ImageError) as err:
        compressed_to_rgb(bomb)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert err.value.reason == "too_large" and peak < 20e6
    node = ctx.create(DetectorNode, backend="onnxruntime", threads=1, image_transport="compressed")
    h = Harness(node, node.on_frame, node.input.worker)
    bomb.header.stamp = stamp(1)
    info = camera_info(1, 16000, 16000)
    h.feed(node.p["camera_info_topic"], info)
    h.feed(node.p["image_topic"] + "/compressed", bomb)
    assert node.counters["rejected.too_large"] == 1
    # Below Pillow's own bomb limit, the node's max_decoded_pixels decides (from the header alone).
    medium = CompressedImage(format="png", data=_png_header_only(5000, 5000))
    with pytest.raises(ImageError) as err:
        compressed_to_rgb(medium)
    assert err.value.reason == "too_large" and "max_decoded_pixels" in str(err.value)


# ---------------------------------------------------------------------------- stall report
def test_diagnostics_report_the_age_of_each_output(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    node = ctx.create(TrackerNode, first_track_id=1)
    h = Harness(node, node.on_input, node.worker)
    diags = []
    node._diag_pub.publish = diags.append
    node.publish_diagnostics()
    assert not any(kv.key.startswith("output_age_ms.") for kv in diags[-1].status[0].values)
    h.feed(node.p["input_topic"], detections(0, np.random.default_rng(0)))
    node.publish_diagnostics()
    ages = {kv.key: int(kv.value) for kv in diags[-1].status[0].values if kv.key.startswith("output_age_ms.")}
    assert list(ages) == [f"output_age_ms.{node.p['output_topic']}"] and 0 <= ages[f"output_age_ms.{node.p['output_topic']}"] < 5000


def test_d7_tracker_side_an_absurd_future_stamp_does_not_cost_the_next_frame(ctx):
    from ba_perception.nodes.tracker_node import TrackerNode

    node = ctx.create(TrackerNode, input_type="observations", input_topic="/obs", first_track_id=1, ego_wait_s=0.0)
    h = Harness(node, node.on_input, node.worker)
    rng = np.random.default_rng(0)
    out = h.published[node.p["output_topic"]]
    for k in range(3):
        h.feed("/odom", odometry(k))
        h.feed("/obs", observations(k, rng))
    absurd = observations(3, rng)
    absurd.header.stamp.sec = 2**31 - 1
    h.feed("/obs", absurd)  # no odometry there: rejected as missing_ego_motion
    h.feed("/odom", odometry(3))
    h.feed("/obs", observations(3, rng))  # counted as stamp_backwards, but its odometry is still there
    assert node.counters["rejected.stamp_backwards"] == 1 and node.counters["rejected.missing_ego_motion"] == 1
    assert len(out) == 4 and out[-1].header.stamp == stamp(3)


def test_d7_track_buffer_an_absurd_stamp_costs_no_frame_and_a_gap_is_used_at_once(ctx):
    from ba_perception.nodes.track_buffer_node import TrackBufferNode

    node = ctx.create(TrackBufferNode, correspondences="none", ego_wait_s=0.0)
    h = Harness(node, node.on_input, node.worker)
    rng = np.random.default_rng(0)
    out = h.published[node.p["output_topic"]]
    for k in range(3):
        h.feed("/odom", odometry(k))
        h.feed(node.p["input_topic"], observations(k, rng))
    absurd = observations(3, rng)
    absurd.header.stamp.sec = 2**31 - 1
    h.feed(node.p["input_topic"], absurd)  # no odometry there: rejected before the tracklets see it
    h.feed("/odom", odometry(3))
    h.feed(node.p["input_topic"], observations(3, rng))
    assert node.counters["rejected.missing_ego_motion"] == 1 and node.counters.get("rejected.stamp_backwards", 0) == 0
    assert len(out) == 4 and max(d.num_frames for d in out[-1].detections) == 4  # the tracklets went on
    # a replay paused for an hour (odometry with it): the first frame after the gap is published at once
    h.feed("/odom", odometry(36000))
    h.feed(node.p["input_topic"], observations(36000, rng))
    assert node.counters["rejected.stamp_gap"] == 1 and len(out) == 5
    assert max(d.num_frames for d in out[-1].detections) == 1  # new tracklets
