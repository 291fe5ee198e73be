"""Settings of the window refinement (:class:`RefineConfig`) and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ba_perception.core.oba.depth_cues import DEPTH_CUES, DepthCueConfig
from ba_perception.core.oba.problem import SolverOptions

CORRESPONDENCES = ("descriptor", "klt", "orb", "oracle", "none")
# Point-track noise (px) the static test assumes per correspondence source when
# ``static_track_noise_px`` is 0 (chosen on the world val split: docs/experiments.md). Larger values
# call more slow movers static, which zeroes their velocity.
TRACK_NOISE_PX = {"descriptor": 0.75, "klt": 0.1, "orb": 0.2, "oracle": 0.1, "none": 0.1}


class RefineError(ValueError):
    """Raised on an invalid refinement configuration."""


@dataclass
class RefineConfig:
    """Settings of the window refinement.

    Attributes:
        window: BA frames: the newest ``window`` usable frames of each tracklet (0 = all it keeps).
            A tracklet that keeps more frames (``static_window``) gives its older ones to the
            static test only, which triangulates the point tracks over all of them.
        num_points: K point tracks per tracklet.
        correspondences: ``descriptor`` (mutual NN of learned descriptors), ``klt`` / ``orb`` (KLT
            or ORB tracks on the images, passed in as ``point_tracks`` by the caller, e.g. its
            ``KltTracker``), ``oracle`` (ground truth sample ids), ``none`` (priors and motion only).
        match_ratio: Lowe ratio on cosine distance; match_min_similarity: cosine floor.
        klt_realign: with ``klt``, re-align each KLT point against its seed patch warped by the
            tracklet's affine image motion every frame (:class:`KltTracker` ``realign``).
        pixel_std: assumed reprojection noise, pixels (sets the residual weights and hence the
            covariance scale; the robust loss scale is in these whitened units).
        roll_pitch_std: prior std of roll and pitch about the detector's upright box, radians.
        accel_std: constant-velocity prior, m/s^2 (translation) and angular_accel_std rad/s^2.
        static_speed_mps: without enough point tracks, objects slower than this are static.
        static_resolve: decide static vs moving per object. An object slower than
            ``static_candidate_mps`` (free-pose solve) is static when its point tracks triangulate
            as static points (:mod:`~ba_perception.core.oba.motion_state`: median reprojection
            residual below 4 ``static_track_noise_px`` (0: ``TRACK_NOISE_PX`` of the
            ``correspondences``), depth within 4 sigma of the detector's,
            ``static_depth_log_std`` being the detector's relative depth error); objects with
            fewer than ``min_points_for_selection`` tracks are static below ``static_speed_mps``.
            Static objects get zero velocity.
        covariance_scale: factor on the published pose and velocity covariances of refined boxes.
            The solver's covariance treats the detector's depth errors as independent from frame to
            frame while they persist, so it is overconfident (docs/experiments.md); consumers (the
            tracker's gate and Kalman filter) see the scaled one.
        heading_from_velocity_mps: a refined moving object at least this fast (m/s, horizontal)
            gets its yaw from its velocity direction (of the two headings along it, the one nearer
            the solved yaw, so a detector's flipped box stays flipped and reversing is allowed), roll
            and pitch zero: vehicles move along their heading and the window's velocity is a steadier
            yaw cue than the per-frame box. 0 turns it off. The published pose covariance is the
            solver's (it does not shrink the yaw variance).
        scene_static: scene-level BA: every object gets one pose for all frames of its window
            (the static-world assumption of classic SfM; the ablation BA-Det compares against).
        min_baseline_m: camera travel below which the window is degenerate (zero baseline).
        min_depth_m: detections nearer than this (or behind the camera) are dropped.
        depth_cues: which depth sources set each tracklet's depth prior before the BA
            (:mod:`~ba_perception.core.oba.depth_cues`): ``detector`` (the detector's depth alone),
            ``ground`` (+ ground contact), ``triangulation`` (+ triangulation of static objects),
            ``all``; cues: their uncertainties. The shipped ``detector`` keeps today's behaviour: with
            an unbiased detector ``all`` made the depth worse on the world test split, while it removes
            most of an injected detector bias (docs/experiments.md); ``all`` is for a detector on a new camera.
        solver: LM options (iterations, loss, yaw-only, ...).
        device, dtype: where the batch is solved.
        cuda_graph: on CUDA, replay each solve from a CUDA graph (batch padded to a multiple of 16;
            one graph per padded shape is captured on first use and kept).
    """

    window: int = 8
    num_points: int = 16
    correspondences: str = "klt"
    match_ratio: float = 0.9
    match_min_similarity: float = 0.5
    klt_realign: bool = True
    pixel_std: float = 1.0
    roll_pitch_std: float = 0.05
    accel_std: float = 3.0
    angular_accel_std: float = 1.0
    static_speed_mps: float = 0.5
    static_resolve: bool = True
    static_candidate_mps: float = 8.0
    static_track_noise_px: float = 0.0
    static_depth_log_std: float = 0.15
    min_points_for_selection: int = 4
    covariance_scale: float = 1.0
    heading_from_velocity_mps: float = 2.0
    scene_static: bool = False
    min_baseline_m: float = 0.05
    min_depth_m: float = 0.5
    depth_cues: str = "detector"
    cues: DepthCueConfig = field(default_factory=DepthCueConfig)
    solver: SolverOptions = field(default_factory=SolverOptions)
    cuda_graph: bool = True
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.correspondences not in CORRESPONDENCES:
            raise RefineError(f"correspondences must be one of {CORRESPONDENCES}, got {self.correspondences!r}")
        if not self.covariance_scale > 0 or not self.heading_from_velocity_mps >= 0:
            raise RefineError(f"covariance_scale must be > 0 and heading_from_velocity_mps >= 0; got "
                              f"{self.covariance_scale}, {self.heading_from_velocity_mps}")
        if not self.static_track_noise_px >= 0 or not self.static_depth_log_std >= 0:
            raise RefineError(f"static_track_noise_px and static_depth_log_std must be >= 0; got "
                              f"{self.static_track_noise_px}, {self.static_depth_log_std}")
        if self.window < 0:
            raise RefineError(f"window must be >= 0 (0 = every frame of the tracklet), got {self.window}")
        if self.depth_cues not in DEPTH_CUES:
            raise RefineError(f"depth_cues must be one of {DEPTH_CUES}, got {self.depth_cues!r}")

    def track_noise_px(self) -> float:
        """The point-track noise of the static test: ``static_track_noise_px``, or its source's default."""
        return self.static_track_noise_px or TRACK_NOISE_PX[self.correspondences]

