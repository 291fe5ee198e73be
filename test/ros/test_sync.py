"""TimeSynchronizer: the message_filters policies on real sensor_msgs messages."""

from __future__ import annotations

import numpy as np
import pytest
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CameraInfo, Image

from ba_perception.ros.node import ns_to_time
from ba_perception.ros.sync import TimeSynchronizer, stamp_ns

T0 = 1_700_000_000_000_000_000
DT = 100_000_000  # 10 Hz


def _msg(cls, t_ns):
    m = cls()
    m.header.stamp = ns_to_time(t_ns)
    return m


def _feed(sync, n, skew_ns, drop_info_every=5, rng=None):
    """Image, camera_info (1 in `drop_info_every` dropped) and odometry with skewed stamps."""
    rng = rng or np.random.default_rng(1)
    for i in range(n):
        t = T0 + i * DT
        sync.add(0, _msg(Image, t))
        if i % drop_info_every != drop_info_every - 1:
            sync.add(1, _msg(CameraInfo, t + int(rng.uniform(-skew_ns, skew_ns))))
        sync.add(2, _msg(Odometry, t + int(rng.uniform(-skew_ns, skew_ns))))


def test_approximate_pairs_expected_frames_with_drops_and_skew():
    out = []
    sync = TimeSynchronizer(3, lambda *m: out.append(m), queue_size=10, slop_s=0.02)
    _feed(sync, 50, skew_ns=9_000_000)
    frames = [(stamp_ns(img) - T0) // DT for img, _, _ in out]
    assert frames == [i for i in range(50) if i % 5 != 4]
    for img, info, odom in out:
        assert abs(stamp_ns(info) - stamp_ns(img)) <= 20_000_000
        assert abs(stamp_ns(odom) - stamp_ns(img)) <= 20_000_000


def test_approximate_pairs_none_when_skew_exceeds_slop():
    out = []
    sync = TimeSynchronizer(2, lambda *m: out.append(m), slop_s=0.01)
    for i in range(20):
        t = T0 + i * DT
        sync.add(0, _msg(Image, t))
        sync.add(1, _msg(CameraInfo, t + 30_000_000))
    assert out == []


def test_exact_policy_needs_equal_stamps():
    out = []
    sync = TimeSynchronizer(2, lambda *m: out.append(m), slop_s=0.0)
    sync.add(0, _msg(Image, T0))
    sync.add(1, _msg(CameraInfo, T0 + 1))
    sync.add(0, _msg(Image, T0 + DT))
    sync.add(1, _msg(CameraInfo, T0 + DT))
    assert [stamp_ns(a) for a, _ in out] == [T0 + DT]


def test_arrival_order_does_not_matter():
    out = []
    sync = TimeSynchronizer(2, lambda *m: out.append(m), slop_s=0.005)
    for i in range(10):
        sync.add(1, _msg(CameraInfo, T0 + i * DT + 1000))
    for i in range(10):
        sync.add(0, _msg(Image, T0 + i * DT))
    assert len(out) == 10


def test_backwards_jump_resets_queues_and_calls_hook():
    resets, out = [], []
    sync = TimeSynchronizer(2, lambda *m: out.append(m), slop_s=0.0, on_reset=lambda: resets.append(1))
    sync.add(0, _msg(Image, T0 + 50 * DT))
    sync.add(0, _msg(Image, T0))  # bag looped
    assert resets == [1] and sync.queues[0] == {T0: sync.queues[0][T0]}
    sync.add(1, _msg(CameraInfo, T0))
    assert len(out) == 1


def test_queue_is_bounded():
    sync = TimeSynchronizer(2, lambda *m: None, queue_size=3)
    for i in range(10):
        sync.add(0, _msg(Image, T0 + i * DT))
    assert len(sync.queues[0]) == 3


@pytest.mark.parametrize("bad", [dict(num_inputs=0), dict(queue_size=0), dict(slop_s=-1.0)])
def test_invalid_configuration(bad):
    kw = dict(num_inputs=2, callback=lambda *m: None) | bad
    with pytest.raises(ValueError):
        TimeSynchronizer(**kw)


def test_every_message_is_emitted_queued_or_counted_unpaired():
    out, drops = [], []
    sync = TimeSynchronizer(3, lambda *m: out.append(m), queue_size=10, slop_s=0.02,
                            on_drop=lambda i, n: drops.append((i, n)))
    _feed(sync, 50, skew_ns=9_000_000)
    fed = [50, 40, 50]  # images, camera_infos (every 5th dropped), odometry
    for i in range(3):
        assert fed[i] == len(out) + sync.unpaired[i] + len(sync.queues[i]), i
    # the 10 images without camera_info: 9 pushed out unpaired, the last one still waiting
    assert sync.unpaired[0] == 9 == sum(n for i, n in drops if i == 0) and len(sync.queues[0]) == 1
    # a reset (stamps jump back) drops what was queued, counted too
    sync.add(0, _msg(Image, T0))
    assert sum(len(q) for q in sync.queues) == 1
    for i in range(3):
        assert fed[i] + (i == 0) == len(out) + sync.unpaired[i] + len(sync.queues[i]), i
