"""Ego-motion buffer: timestamped ``T_odom_base`` poses, interpolated at any capture stamp.

Odometry usually runs faster than the camera and is not stamped at the same instants, so poses
are interpolated (linear in translation, slerp in rotation) between the two bracketing samples,
like a TF lookup. Lookups outside the buffered span by more than ``max_extrapolation_s`` fail.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from ba_perception.core import geometry


class EgoMotionError(LookupError):
    """No pose can be given for the requested stamp."""


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(np.clip(d, -1, 1))
    return (np.sin((1 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)


class EgoMotionBuffer:
    """Keeps the last ``capacity`` poses ``T_odom_base`` (4x4, metres) keyed by stamp (ns)."""

    def __init__(self, capacity: int = 500, max_extrapolation_s: float = 0.05) -> None:
        self.capacity = capacity
        self.max_extrapolation_ns = int(max_extrapolation_s * 1e9)
        self.stamps: list[int] = []
        self.poses: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.stamps)

    def reset(self) -> None:
        """Forget all poses."""
        self.stamps.clear()
        self.poses.clear()

    def add(self, stamp_ns: int, T_odom_base: np.ndarray) -> str | None:
        """Insert a pose; a stamp older than the newest by > 1 s means time went back: reset first.

        Returns:
            None, or why the buffer changed beyond one insertion (for the caller to count and log):
            ``"backwards"`` (reset: the poses buffered so far were dropped) or ``"replaced"`` (a pose with
            the same stamp was overwritten).
        """
        reason = None
        if self.stamps and stamp_ns < self.stamps[-1] - 1_000_000_000:
            self.reset()
            reason = "backwards"
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            self.poses[i] = np.asarray(T_odom_base, dtype=np.float64)
            return "replaced"
        self.stamps.insert(i, int(stamp_ns))
        self.poses.insert(i, np.asarray(T_odom_base, dtype=np.float64))
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.poses[0]
        return reason

    def lookup(self, stamp_ns: int) -> np.ndarray:
        """``T_odom_base`` at ``stamp_ns``.

        Raises:
            EgoMotionError: empty buffer, or the stamp is outside the buffered span by more than
                the allowed extrapolation (then the nearest pose is *not* used).
        """
        if not self.stamps:
            raise EgoMotionError("no ego-motion received yet")
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            return self.poses[i].copy()
        if i == 0 or i == len(self.stamps):
            j = 0 if i == 0 else len(self.stamps) - 1
            gap = abs(self.stamps[j] - stamp_ns)
            if gap > self.max_extrapolation_ns:
                raise EgoMotionError(f"no ego-motion within {gap / 1e9:.3f} s of the frame "
                                     f"(buffer spans {(self.stamps[-1] - self.stamps[0]) / 1e9:.2f} s)")
            return self.poses[j].copy()
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        a = (stamp_ns - t0) / (t1 - t0)
        P0, P1 = self.poses[i - 1], self.poses[i]
        q = geometry.quaternion_from_matrix(torch.as_tensor(np.stack([P0[:3, :3], P1[:3, :3]]))).numpy()
        T = np.eye(4)
        T[:3, :3] = geometry.matrix_from_quaternion(torch.as_tensor(_slerp(q[0], q[1], a))).numpy()
        T[:3, 3] = (1 - a) * P0[:3, 3] + a * P1[:3, 3]
        return T
