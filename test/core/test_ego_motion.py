"""Ego-motion interpolation and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ba_perception.core.ego_motion import EgoMotionBuffer, EgoMotionError


def _pose(x, yaw):
    T = np.eye(4)
    T[:3, :3] = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]
    T[0, 3] = x
    return T


def test_interpolates_translation_and_yaw():
    buf = EgoMotionBuffer()
    buf.add(0, _pose(0.0, 0.0))
    buf.add(100_000_000, _pose(1.0, 0.2))
    T = buf.lookup(25_000_000)
    assert np.allclose(T, _pose(0.25, 0.05), atol=1e-9)


def test_exact_and_out_of_order_samples():
    buf = EgoMotionBuffer()
    buf.add(200, _pose(2.0, 0.0))
    buf.add(100, _pose(1.0, 0.0))
    assert np.allclose(buf.lookup(100), _pose(1.0, 0.0))
    assert np.allclose(buf.lookup(150)[0, 3], 1.5)


def test_refuses_far_extrapolation_and_empty():
    buf = EgoMotionBuffer(max_extrapolation_s=0.05)
    with pytest.raises(EgoMotionError, match="no ego-motion received"):
        buf.lookup(0)
    buf.add(0, _pose(0.0, 0.0))
    assert np.allclose(buf.lookup(40_000_000), _pose(0.0, 0.0))
    with pytest.raises(EgoMotionError, match="within"):
        buf.lookup(200_000_000)


def test_time_going_back_resets_and_capacity_bounds():
    buf = EgoMotionBuffer(capacity=3)
    for i in range(5):
        buf.add(10_000_000_000 + i, _pose(i, 0))
    assert len(buf) == 3
    buf.add(0, _pose(0, 0))
    assert len(buf) == 1
