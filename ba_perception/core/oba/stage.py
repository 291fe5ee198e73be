"""The track buffer's per-frame step: tracklets -> point tracks -> scheduled batched object BA.

:class:`TrackBufferStage` is the one implementation of what track_buffer_node does with a frame;
the node, ``eval-oba`` / ``eval-track`` (:mod:`ba_perception.eval.world_pipeline`) and
``bench pipeline`` all call it, so every evaluation number is the node's behaviour.
:class:`TrackBufferConfig` holds its settings; its defaults are the shipped ones and the node's
parameter declarations are derived from them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
import torch

from ba_perception.core.config import config_from_params
from ba_perception.core.geometry import valid_intrinsics
from ba_perception.core.oba.correspondences import KltTracker
from ba_perception.core.oba.refine import RefinedBox, refine_tracklets
from ba_perception.core.oba.refine_config import RefineConfig
from ba_perception.core.oba.tracklets import (
    ObjectTrack,
    Observation,
    TrackletBuffer,
    TrackletConfig,
)

SOLVER_PARAMS = ("max_iterations", "loss", "loss_scale_px", "yaw_only")  # track_buffer_node parameters of SolverOptions
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrackBufferConfigError(ValueError):
    """An invalid track buffer setting."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the ``dtype`` parameter's spelling)."""
    return str(dtype).removeprefix("torch.")


@dataclass
class TrackBufferConfig:
    """Everything the per-frame step runs with.

    Attributes:
        tracklets: association and history. Its ``window`` is the history each tracklet keeps:
            the node's ``static_window`` (the static test triangulates over all of it), at least
            the BA window.
        refine: the object BA; its ``window`` is the BA window (the node's ``window``).
        solve_every_n: run the BA every N-th frame; other frames publish each tracklet's last
            refinement (a new tracklet is always solved).
        max_stamp_jump_s: a stamp more than this after the last frame starts a new stream, like a
            stamp going back: see :meth:`TrackBufferStage.step`.
    """

    tracklets: TrackletConfig = field(default_factory=TrackletConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    solve_every_n: int = 1
    max_stamp_jump_s: float = 10.0

    def __post_init__(self) -> None:
        if self.solve_every_n < 1 or not self.max_stamp_jump_s > 0:
            raise TrackBufferConfigError(f"solve_every_n must be >= 1 and max_stamp_jump_s > 0, got "
                                         f"{self.solve_every_n}, {self.max_stamp_jump_s}")
        if self.tracklets.window < self.refine.window:  # the tracklet keeps at least the BA window
            self.tracklets = replace(self.tracklets, window=self.refine.window)

    @classmethod
    def from_params(cls, p: Mapping[str, Any], device: str | None = None) -> TrackBufferConfig:
        """Settings from track_buffer_node parameters (``ros__parameters``); absent keys keep the defaults.

        Parameter names map to fields: ``window`` -> ``refine.window``, ``static_window`` ->
        ``tracklets.window`` (0 or at most ``window``: the BA window), ``max_iterations`` / ``loss``
        / ``loss_scale_px`` / ``yaw_only`` -> ``refine.solver``, ``dtype`` (``float32`` /
        ``float64``) -> ``refine.dtype``, the other ``TrackletConfig`` / ``RefineConfig`` /
        ``TrackBufferConfig`` field names to those fields.

        Args:
            p: parameter name -> value.
            device: ``cpu`` or ``cuda`` (already resolved from ``auto``); None keeps the default.
        """
        d = cls()
        if "dtype" in p and p["dtype"] not in DTYPES:
            raise TrackBufferConfigError(f"dtype must be one of {list(DTYPES)}, got {p['dtype']!r}")
        flat = {k: v for k, v in p.items() if k not in ("device", "dtype", "solver")}
        rc = config_from_params(RefineConfig, flat)
        rc = replace(rc, solver=replace(d.refine.solver, **{k: p[k] for k in SOLVER_PARAMS if k in p}),
                     dtype=DTYPES[p["dtype"]] if "dtype" in p else d.refine.dtype,
                     device=d.refine.device if device is None else device)
        tp = {k: v for k, v in p.items() if k != "window"}  # the node's `window` is the BA's
        if "static_window" in p:
            tp["window"] = p["static_window"]
        tc = config_from_params(TrackletConfig, tp)
        own = {f.name: p[f.name] for f in fields(cls) if f.name not in ("tracklets", "refine") and f.name in p}
        return cls(tracklets=tc, refine=rc, **own)

    @staticmethod
    def param_names() -> set[str]:
        """Every track_buffer_node parameter :meth:`from_params` reads (the algorithm's settings)."""
        names = {f.name for f in fields(TrackletConfig)} | {f.name for f in fields(RefineConfig)}
        names |= set(SOLVER_PARAMS) | {"static_window", "dtype"}
        names |= {f.name for f in fields(TrackBufferConfig)}
        return names - {"tracklets", "refine", "solver", "device", "cues"}


class PointTracker(Protocol):
    """What follows points through the images for the BA (:class:`KltTracker`, or an evaluation's ORB)."""

    def step(self, stamp_ns: int, gray: np.ndarray, tracks: list[ObjectTrack]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Point tracks ``{tracklet_id: (uv (F, K, 2), mask (F, K))}`` of the tracklets updated at ``stamp_ns``."""

    def reset(self) -> None:
        """Forget everything (the stream restarted)."""


@dataclass
class StepResult:
    """What one frame gave.

    Attributes:
        boxes: one :class:`RefinedBox` per tracklet updated in this frame (unrefined ones carry
            the detection and the reason); empty when the frame was rejected.
        assignment: per input observation the tracklet id it went to; -1 when the observation was
            dropped (see ``dropped``) or the frame rejected.
        rejected: empty, or why the whole frame was not used (``intrinsics``);
            the stage's state is then untouched.
        reset: empty, or why every tracklet was dropped before this frame: ``stamp_backwards`` (a bag
            loop) or ``stamp_gap`` (more than ``max_stamp_jump_s`` since the last frame).
        solved: the BA ran in this frame (``solve_every_n``).
        dropped: observations left out, by reason (``TrackletBuffer.last_dropped``).
        seconds: wall time of ``associate`` (tracklets + point tracks) and ``refine`` (the BA).
    """

    boxes: list[RefinedBox] = field(default_factory=list)
    assignment: list[int] = field(default_factory=list)
    rejected: str = ""
    reset: str = ""
    solved: bool = False
    dropped: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)


class TrackBufferStage:
    """The track buffer's per-frame step: tracklet association, point tracks, scheduled BA, reset.

    Args:
        config: settings (defaults: the shipped ones).
        point_tracker: follows points for ``correspondences: klt`` / ``orb``; default a
            :class:`KltTracker` when ``config.refine.correspondences`` is ``klt``, else none
            (``descriptor`` and ``oracle`` read the observations' samples, ``none`` uses priors only).
        clock: seconds for ``StepResult.seconds`` (a benchmark passes one that synchronises the GPU).
    """

    def __init__(self, config: TrackBufferConfig | None = None, point_tracker: PointTracker | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config or TrackBufferConfig()
        rc = self.config.refine
        if point_tracker is None and rc.correspondences == "klt":
            point_tracker = KltTracker(rc.num_points, realign=rc.klt_realign)
        self.point_tracker = point_tracker
        self.clock = clock
        self.reset()

    @property
    def needs_images(self) -> bool:
        """Whether :meth:`step` wants the frame's grayscale image."""
        return self.point_tracker is not None

    def reset(self) -> None:
        """Drop every tracklet, point track and refinement (the stream restarted)."""
        self.buffer = TrackletBuffer(self.config.tracklets)
        if self.point_tracker is not None:
            self.point_tracker.reset()
        self.last_stamp_ns: int | None = None
        self._frames = 0
        self._last_refined: dict[int, RefinedBox] = {}

    def _check_stamp(self, stamp_ns: int) -> str:
        """Why the frame at ``stamp_ns`` starts a new stream (``stamp_backwards``, ``stamp_gap``), or ``""``."""
        last = self.last_stamp_ns
        if last is None or 0 <= stamp_ns - last <= int(self.config.max_stamp_jump_s * 1e9):
            return ""
        return "stamp_backwards" if stamp_ns < last else "stamp_gap"

    def step(self, stamp_ns: int, observations: Sequence[Observation], T_odom_cam: np.ndarray | None, K: np.ndarray,
             gray: np.ndarray | None = None) -> StepResult:
        """Advance by one frame.

        A stamp before the last one (a bag loop) or more than ``max_stamp_jump_s`` after it (a pause,
        a restamped replay) starts a new stream: every tracklet is dropped, then the frame is used
        (a frame is never held back waiting for the next one: a lockstep player waits for its
        output). A single absurd stamp is the caller's to refuse: track_buffer_node rejects a frame
        without odometry at its stamp before it reaches the stage.

        Args:
            stamp_ns: capture time, nanoseconds.
            observations: the frame's detections, camera optical frame.
            T_odom_cam: ``(4, 4)`` camera pose in odom at capture, or None when unknown.
            K: ``(3, 3)`` intrinsics.
            gray: ``(H, W)`` uint8 image of the frame for the point tracker; None when it is
                missing (that frame's BA then uses priors only).

        Returns:
            A :class:`StepResult`.
        """
        if not valid_intrinsics(K):
            return StepResult(assignment=[-1] * len(observations), rejected="intrinsics")
        reset = self._check_stamp(int(stamp_ns))
        if reset:
            self.reset()
        self.last_stamp_ns = int(stamp_ns)
        t0 = self.clock()
        tracks, assignment = self.buffer.update(int(stamp_ns), list(observations), T_odom_cam, K)
        point_tracks = None
        if self.point_tracker is not None and gray is not None:  # followed every frame
            point_tracks = self.point_tracker.step(int(stamp_ns), gray, tracks)
        t1 = self.clock()
        self._frames += 1
        solve = self._frames % self.config.solve_every_n == 0 or any(t.tracklet_id not in self._last_refined for t in tracks)
        if solve:
            boxes = refine_tracklets(tracks, self.config.refine, point_tracks)
            self._last_refined = {b.tracklet_id: b for b in boxes}
        else:
            boxes = [self._last_refined[t.tracklet_id] for t in tracks]
        t2 = self.clock()
        return StepResult(boxes, assignment, "", reset, solve, Counter(self.buffer.last_dropped),
                          {"associate": t1 - t0, "refine": t2 - t1})
