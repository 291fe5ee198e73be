"""tracker_node: refined 3D detections (or raw observations) -> persistent 3D tracks in odom (BA2-Track).

Association is graph matching over gated track/detection graphs (3D Mahalanobis + appearance +
2D IoU nodes, relative-position edges), with Hungarian baselines selectable by ``method``.
With ``input_type: observations`` the detector's camera-frame boxes are moved to odom with the
ego-motion; with ``detections`` (the track buffer's output) they already are.

Input is validated per object: an object with an unusable pose (NaN, beyond 1e6 m, a non-unit
quaternion) is rejected and counted (``rejected.bad_pose`` / ``bad_observation``), an embedding of
another length than the message's common one is ignored (``rejected.embedding_size``), at most
``max_detections`` objects per message are used (``rejected.too_many_objects``), and the objects the
tracker itself drops are mirrored as rejections (``invalid_detection``, ``duplicate_detection``). A
frame with a bad ``camera_pose`` or another ``frame_id`` than ``odom_frame`` is rejected whole; bad
``k`` is published as zeros (unknown). Nothing non-finite is published. Track ids start at the wall
clock in microseconds (``first_track_id: 0``), so they are not reused after a restart of the node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.core.ego_motion import EgoMotionError
from ba_perception.core.tracking import METHODS, QAP_SOLVERS, Detections, Tracker, TrackerConfig, TrackingInputError
from ba_perception.ros.convert import k_problem, matrices_to_poses, matrix_to_pose, pose_problem, pose_to_matrix
from ba_perception.ros.ego_motion import EGO_MOTION_PARAMS, EgoMotionInput
from ba_perception.ros.inputs import FrameWorker
from ba_perception.ros.node import PerceptionNode, StartupError, extend_trace, make_stage, run_node, wall_ns
from ba_perception.ros.observations import MAX_EMBEDDING_DIM, common_length, msg_to_observations
from ba_perception.ros.params import ParamSpec
from ba_perception.ros.sync import stamp_ns

_DEFAULTS = TrackerConfig()
TRACKER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("method", _DEFAULTS.method, "association method", choices=tuple(METHODS)),
    ParamSpec("solver", _DEFAULTS.solver, "graph-matching solver", choices=tuple(QAP_SOLVERS)),
    ParamSpec("chi2_gate", _DEFAULTS.chi2_gate, "gate on squared Mahalanobis distance (3 dof)", min=0.0),
    ParamSpec("max_gate_m", _DEFAULTS.max_gate_m, "largest centre distance of any match, metres", min=0.0),
    ParamSpec("w_3d", _DEFAULTS.w_3d, "node affinity weight of 3D distance", min=0.0),
    ParamSpec("w_app", _DEFAULTS.w_app, "node affinity weight of appearance cosine", min=0.0),
    ParamSpec("w_iou", _DEFAULTS.w_iou, "node affinity weight of 2D IoU", min=0.0),
    ParamSpec("w_edge", _DEFAULTS.w_edge, "edge affinity weight (relative-position consistency)", min=0.0),
    ParamSpec("edge_sigma_m", _DEFAULTS.edge_sigma_m, "relative-position tolerance of edges, metres", min=1e-6),
    ParamSpec("min_affinity", _DEFAULTS.min_affinity, "minimum node affinity of an accepted match", min=0.0),
    ParamSpec("n_init", _DEFAULTS.n_init, "hits to confirm a track", min=1),
    ParamSpec("max_age", _DEFAULTS.max_age, "missed frames before a confirmed track is deleted", min=0),
    ParamSpec("reid", _DEFAULTS.reid, "re-identify recently lost tracks on appearance + 3D"),
    ParamSpec("reid_window_s", _DEFAULTS.reid_window_s, "how long lost tracks stay re-identifiable, seconds", min=0.0),
    ParamSpec("min_score_new", _DEFAULTS.min_score_new, "minimum detection score to start a track", min=0.0),
    ParamSpec("velocity_std_mps", _DEFAULTS.velocity_std_mps, "refined moving detections also measure the track's "
              "velocity (their covariance plus this std squared, m/s) and start new tracks with it; 0 = off", min=0.0),
    ParamSpec("max_detections", _DEFAULTS.max_detections, "objects accepted per input message; the excess (lowest "
              "scores) is rejected and counted as too_many_objects", min=1),
    ParamSpec("max_tracks", _DEFAULTS.max_tracks, "live tracks; no new track starts beyond it (counted)", min=1),
    ParamSpec("first_track_id", _DEFAULTS.first_track_id, "first track id; 0 = the wall clock in microseconds at start, so ids are never "
              "reused within a run, also after a restart of the node", min=0),
)


class TrackerNode(PerceptionNode):
    """See the module docstring."""

    PARAMS = TRACKER_PARAMS + EGO_MOTION_PARAMS + (
        ParamSpec("input_type", "detections", "Detection3DArray from the track buffer or raw ObjectObservationArray",
                  choices=("detections", "observations")),
        ParamSpec("input_topic", "/ba_perception/detections", "input topic"),
        ParamSpec("output_topic", "/ba_perception/tracks", "Track3DArray output"),
        ParamSpec("publish_tentative", False, "also publish tracks that are not confirmed yet"),
        ParamSpec("odom_frame", "odom", "frame_id of the output"),
        ParamSpec("qos", "reliable", "input/output QoS", choices=("reliable", "sensor_data", "best_effort")),
        ParamSpec("qos_depth", 10, "queue depth", min=1),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("tracker_node", **kwargs)
        torch.set_num_threads(1)  # small per-frame tensors: threads only add contention with the detector
        from ba_perception_msgs.msg import Detection3DArray, ObjectObservationArray, Track3DArray

        try:
            self.tracker = Tracker(TrackerConfig.from_params(self.p))
        except ValueError as err:
            raise StartupError(f"tracker configuration: {err}") from err
        self.ego = EgoMotionInput(self) if self.p["input_type"] == "observations" else None
        cls = Detection3DArray if self.p["input_type"] == "detections" else ObjectObservationArray
        self.pub = self.create_publisher(Track3DArray, self.p["output_topic"], self.output_qos())
        self.worker = FrameWorker(self, self.on_input, "frames_dropped_stale")
        self.create_subscription(cls, self.p["input_topic"], lambda m: self.worker.put((wall_ns(), m)), self.qos())
        self.last_stamp: int | None = None
        self._reported = dict(self.tracker.counters)  # tracker counters already turned into rejections

    def on_input(self, item: tuple[int, Any]) -> None:
        """Track one detection message (``(received_ns, msg)``) and publish the tracks."""
        received, msg = item
        start = wall_ns()
        stamp = stamp_ns(msg)
        if self.last_stamp is not None and stamp < self.last_stamp:
            # The tracker resets itself on the backward stamp; the ego-motion buffer is not reset here: it resets
            # when the odometry itself goes back (counted as odom_backwards), so odometry already received for
            # this frame is not thrown away (one absurd future stamp would otherwise cost the next frames).
            self.reject("stamp_backwards", "input stamp went backwards; tracks reset (bag looped?)")
        self.last_stamp = stamp
        if self.p["input_type"] == "detections" and msg.header.frame_id != self.p["odom_frame"]:
            self.reject("frame_id", f"detections are in frame {msg.header.frame_id!r}, expected odom_frame "
                        f"{self.p['odom_frame']!r}; frame dropped")
            return
        try:
            dets, T_odom_cam = self.to_detections(msg, stamp)
        except EgoMotionError as err:
            self.reject("missing_ego_motion", str(err))
            return
        except TrackingInputError as err:
            self.reject("malformed", str(err))
            return
        if T_odom_cam is None:
            return
        tracks = self.tracker.step(stamp, dets)
        self.report_tracker_counters()
        out = self.to_msg(msg, tracks, T_odom_cam, received, start)
        self.pub.publish(out)
        self.count("frames_out")

    def report_tracker_counters(self) -> None:
        """Mirror the tracker's counters and count the objects it dropped.

        Mirror the tracker's counters as ``tracker.<name>`` (current totals) and turn the objects it
        dropped since the last frame into counted, logged rejections.
        """
        c = self.tracker.counters
        for k, v in c.items():
            if v:  # current totals (Counter.update would add them up every frame)
                self.counters[f"tracker.{k}"] = v
        for key, reason in (("invalid_detections", "invalid_detection"), ("duplicate_detections", "duplicate_detection"),
                            ("embedding_dim_mismatch", "embedding_size"), ("detections_over_limit", "too_many_objects"),
                            ("births_over_limit", "too_many_tracks"), ("nonfinite_tracks", "nonfinite_track")):
            n = c[key] - self._reported.get(key, 0)
            if n > 0:
                self.reject(reason, f"the tracker dropped {n} object(s) of this frame ({key})", n)
        self._reported = dict(c)

    def _bounded(self, items: list) -> list:
        """Keep at most ``max_detections`` objects of a message.

        At most ``max_detections`` objects of a message (the highest scores, in message order); the
        excess is rejected and counted before any conversion work.
        """
        limit = self.p["max_detections"]
        if len(items) <= limit:
            return items
        self.reject("too_many_objects", f"{len(items)} objects in one message, max_detections is {limit}; "
                    "the lowest-scored are dropped", len(items) - limit)
        score = np.nan_to_num(np.array([o.score for o in items], np.float64), nan=-1.0)
        return [items[i] for i in np.sort(np.argsort(-score, kind="stable")[:limit])]

    def _objects(self, items: list) -> list:
        """The objects of a message with a usable pose, bounded by :meth:`_bounded`.

        The others are rejected one by one and counted.
        """
        good = []
        for o in self._bounded(items):
            why = pose_problem(o.pose)
            if why is None:
                good.append(o)
            else:
                self.reject("bad_pose", f"object dropped: {why}")
        return good

    def to_detections(self, msg: Any, stamp: int) -> tuple[Detections, np.ndarray | None]:
        """The tracker's input of one message and ``T_odom_cam``, or ``(empty, None)`` when the frame is rejected."""
        if self.p["input_type"] == "detections":
            why = pose_problem(msg.camera_pose)
            if why is not None:
                self.reject("camera_pose", f"camera_pose unusable ({why}); frame dropped")
                return Detections.empty(), None
            items = self._objects(list(msg.detections))
            T = np.stack([pose_to_matrix(d.pose) for d in items]) if items else np.zeros((0, 4, 4))
            dim, has_emb = common_length([d.embedding for d in items], MAX_EMBEDDING_DIM)
            for d, ok in zip(items, has_emb):
                if not ok and len(d.embedding):
                    self.reject("embedding_size", f"embedding of length {len(d.embedding)} ignored (common length "
                                f"{dim}, at most {MAX_EMBEDDING_DIM})")
            dets = Detections.from_boxes(
                T[:, :3, 3], np.arctan2(T[:, 1, 0], T[:, 0, 0]), [[d.size.x, d.size.y, d.size.z] for d in items],
                [d.class_label for d in items], [d.score for d in items], [list(d.box_2d) for d in items],
                [list(d.embedding) if ok else [np.nan] * dim for d, ok in zip(items, has_emb)],
                [np.reshape(d.pose_covariance, (6, 6))[:3, :3] for d in items],
                refined=[d.refined for d in items], is_static=[d.is_static for d in items],
                velocities=[[d.velocity.x, d.velocity.y, d.velocity.z] for d in items],
                velocity_covariances=[d.velocity_covariance for d in items])
            return dets, pose_to_matrix(msg.camera_pose)
        if len(msg.observations) > self.p["max_detections"]:
            msg.observations = self._bounded(list(msg.observations))
        obs = msg_to_observations(msg, self.reject)
        assert self.ego is not None  # created for input_type "observations"
        T_odom_cam = self.ego.camera_pose(stamp)
        return Detections.from_camera(T_odom_cam, obs.center_cam, obs.yaw, obs.depth_std, obs.lateral_std, obs.size_lwh,
                                      obs.labels, obs.scores, obs.box_2d, list(obs.embedding)), T_odom_cam

    def to_msg(self, msg: Any, tracks: list, T_odom_cam: np.ndarray, received: int, start: int) -> Any:
        """Track3DArray of ``tracks`` for input ``msg``, with the camera pose and the stage trace."""
        from ba_perception_msgs.msg import Track3D, Track3DArray

        K = np.asarray(msg.k, np.float64)
        if k_problem(K) is not None:
            self.reject("intrinsics", f"input k unusable ({k_problem(K)}); published as all zeros (unknown)")
            K = np.zeros(9)
        out = Track3DArray(camera_pose=matrix_to_pose(T_odom_cam), image_width=msg.image_width,
                           image_height=msg.image_height, k=K.tolist())
        out.header.stamp = msg.header.stamp
        out.header.frame_id = self.p["odom_frame"]
        tracks = [t for t in tracks if t.status != 0 or self.p["publish_tentative"]]
        finite = [np.isfinite(np.r_[t.center, t.velocity, t.size, t.yaw, t.score, t.position_cov.ravel()]).all()
                  for t in tracks]
        if not all(finite):  # the tracker deletes such tracks; never publish one
            self.reject("nonfinite_track", f"{finite.count(False)} track(s) with NaN/inf state not published",
                        finite.count(False))
            tracks = [t for t, ok in zip(tracks, finite) if ok]
        T = np.tile(np.eye(4), (len(tracks), 1, 1))
        T[:, :3, :3] = geometry.rot_z(torch.tensor([float(t.yaw) for t in tracks], dtype=torch.float64)).numpy()
        T[:, :3, 3] = np.array([t.center for t in tracks], np.float64).reshape(-1, 3)
        for t, pose in zip(tracks, matrices_to_poses(T)):
            cov = np.full((6, 6), 0.0)
            cov[:3, :3] = t.position_cov
            cov[3:, 3:] = np.diag([-1.0, -1.0, -1.0])  # orientation covariance unknown
            tr = Track3D(track_id=int(t.track_id), class_label=str(t.class_label), score=float(t.score),
                         status=int(t.status), pose=pose, pose_covariance=cov.ravel().tolist(),
                         age=int(t.age), hits=int(t.hits), frames_since_update=int(t.frames_since_update),
                         box_2d=[float(v) if np.isfinite(v) else -1.0 for v in t.box_2d])
            tr.size.x, tr.size.y, tr.size.z = (float(v) for v in t.size)
            tr.velocity.x, tr.velocity.y, tr.velocity.z = (float(v) for v in t.velocity)
            out.tracks.append(tr)
        out.trace = extend_trace(msg.trace, make_stage("tracker", received, start))
        return out

    def close(self) -> None:
        """Stop the worker thread."""
        self.worker.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(TrackerNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
