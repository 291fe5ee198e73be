"""track_buffer_node: detector observations + ego-motion -> tracklets -> batched object BA -> refined 3D boxes.

BA-Det's second stage. Each frame's observations are linked into short-term tracklets
(motion-compensated 2D IoU + appearance, conservative), each tracklet keeps a sliding window of
its last frames with the camera poses from odometry, and all tracklets are refined in one batched
Levenberg-Marquardt solve (GPU when present). The point tracks come from KLT on the camera images,
followed incrementally per tracklet (``correspondences: klt``, the default;
:class:`~ba_perception.core.oba.correspondences.KltTracker`), or from the detector's learned
descriptors (``descriptor``). Output: Detection3DArray in odom with velocity, covariance from the
solver's information matrix and a static/moving flag (the point tracks triangulate as fixed points
at the detector's depth: :mod:`~ba_perception.core.oba.motion_state`), plus the stage trace.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ba_perception.core.ego_motion import EgoMotionError
from ba_perception.core.geometry import valid_intrinsics
from ba_perception.core.oba.depth_cues import DEPTH_CUES
from ba_perception.core.oba.refine import RefinedBox, publishable_boxes
from ba_perception.core.oba.stage import DTYPES, TrackBufferConfig, TrackBufferStage, dtype_name
from ba_perception.core.oba.tracklets import Observation, observations_from_arrays
from ba_perception.ros.convert import matrices_to_poses, matrix_to_pose
from ba_perception.ros.ego_motion import EGO_MOTION_PARAMS, EgoMotionInput
from ba_perception.ros.image import ImageError, image_to_gray
from ba_perception.ros.inputs import FrameWorker
from ba_perception.ros.node import PerceptionNode, StartupError, make_stage, run_node, wall_ns
from ba_perception.ros.observations import FrameObservations, msg_to_observations
from ba_perception.ros.params import ParamSpec, qos_profile
from ba_perception.ros.sync import stamp_ns

_C = TrackBufferConfig()  # the parameters' defaults are the core config's
_T, _R = _C.tracklets, _C.refine


def to_observations(frame: FrameObservations) -> list[Observation]:
    """Message arrays -> the tracklet buffer's per-object records."""
    return observations_from_arrays(frame.labels, frame.scores, frame.box_2d, frame.center_cam, frame.yaw, frame.size_lwh,
                                    frame.depth_std, frame.lateral_std, frame.yaw_std, frame.embedding, frame.sample_uv,
                                    frame.descriptors)


def refined_to_msgs(boxes: list[RefinedBox]) -> list[Any]:
    """Publishable boxes (:func:`~ba_perception.core.oba.refine.publishable_boxes`) -> ``Detection3D`` messages (odom)."""
    T = np.tile(np.eye(4), (len(boxes), 1, 1))
    if boxes:
        T[:, :3, :3] = np.stack([b.R_odom_obj for b in boxes])
        T[:, :3, 3] = np.stack([b.center_odom for b in boxes])
    return [_refined_to_msg(b, pose) for b, pose in zip(boxes, matrices_to_poses(T))]


def _refined_to_msg(box: RefinedBox, pose: Any) -> Any:
    from geometry_msgs.msg import Point

    from ba_perception_msgs.msg import Detection3D

    d = Detection3D(tracklet_id=int(box.tracklet_id), class_label=box.class_label, score=float(box.score),
                    box_2d=[float(v) for v in box.box_2d], pose=pose,
                    center_camera=Point(x=float(box.center_cam[0]), y=float(box.center_cam[1]), z=float(box.center_cam[2])),
                    pose_covariance=np.asarray(box.pose_covariance, np.float64).ravel().tolist(),
                    velocity_covariance=np.asarray(box.velocity_covariance, np.float64).ravel().tolist(),
                    is_static=bool(box.is_static), refined=bool(box.refined), num_frames=int(box.num_frames),
                    embedding=np.asarray(box.embedding, np.float32).ravel().tolist())
    d.size.x, d.size.y, d.size.z = (float(v) for v in box.size_lwh)
    d.velocity.x, d.velocity.y, d.velocity.z = (float(v) for v in box.velocity_odom)
    return d


class TrackBufferNode(PerceptionNode):
    """See the module docstring."""

    PARAMS = EGO_MOTION_PARAMS + (
        ParamSpec("input_topic", "/ba_perception/observations", "ObjectObservationArray input"),
        ParamSpec("output_topic", "/ba_perception/detections", "Detection3DArray output (odom)"),
        ParamSpec("odom_frame", "odom", "frame_id of the output"),
        ParamSpec("window", _R.window, "BA window: the newest frames of each tracklet in the object BA", min=1, max=32),
        ParamSpec("static_window", _T.window, "frames of history the static test triangulates point tracks over (the tracklet "
                  "keeps them; the BA still takes the newest window); 0 or <= window = the BA window", min=0, max=32),
        ParamSpec("iou_min", _T.iou_min, "minimum IoU of predicted box and detection to link", min=0.0, max=1.0),
        ParamSpec("appearance_min", _T.appearance_min, "minimum embedding cosine to link", min=-1.0, max=1.0),
        ParamSpec("max_misses", _T.max_misses, "frames a tracklet survives unmatched", min=0),
        ParamSpec("max_tracklets", _T.max_tracklets, "bound on live tracklets (memory)", min=1),
        ParamSpec("num_points", _R.num_points, "point tracks per tracklet in the BA", min=1),
        ParamSpec("correspondences", _R.correspondences, "point tracks from learned descriptors, from incremental KLT on "
                  "the camera images (klt: subscribes image_topic), or none (priors only)",
                  choices=("descriptor", "klt", "none")),
        ParamSpec("image_topic", "/camera/image_raw", "camera images for correspondences: klt (the detector's "
                  "input: same stamps)"),
        ParamSpec("klt_realign", _R.klt_realign, "correspondences klt: re-align each point every frame against its "
                  "seed patch, warped by the tracklet's affine image motion (removes chained-LK drift)"),
        ParamSpec("image_transport", "raw", "raw sensor_msgs/Image or compressed (JPEG/PNG) for correspondences: klt",
                  choices=("raw", "compressed")),
        ParamSpec("max_iterations", _R.solver.max_iterations, "LM iterations per solve", min=1),
        ParamSpec("pixel_std", _R.pixel_std, "reprojection noise the BA weights point tracks by, px (tracker noise plus "
                  "model error; sets the image evidence against the detector prior, and the covariance)", min=1e-6),
        ParamSpec("loss", _R.solver.loss, "robust loss of reprojection residuals", choices=("cauchy", "huber", "trivial")),
        ParamSpec("loss_scale_px", _R.solver.loss_scale_px, "robust loss scale, pixels", min=1e-6),
        ParamSpec("yaw_only", _R.solver.yaw_only, "object rotation restricted to yaw on the ground plane"),
        ParamSpec("static_resolve", _R.static_resolve, "decide static vs moving: slow tracklets whose point tracks "
                  "triangulate as fixed points at the detector's depth are static (zero velocity)"),
        ParamSpec("static_candidate_mps", _R.static_candidate_mps, "with static_resolve: only tracklets whose "
                  "refined speed is below this (m/s) may be declared static", min=0.0),
        ParamSpec("static_track_noise_px", _R.static_track_noise_px, "point-track noise, px: static when the tracks "
                  "triangulate as fixed points to within 4x this; 0 = by correspondences (klt 0.1, descriptor 0.75; "
                  "raise for real cameras)", min=0.0),
        ParamSpec("depth_cues", _R.depth_cues, "depth sources fused into each tracklet's depth before the BA: the "
                  "detector's alone, + ground contact (camera mounting + road plane odom z=0), + triangulation of "
                  "static objects over the ego motion, or all (diagnostics count the dominant cue: depth_cue.<name>)",
                  choices=DEPTH_CUES),
        ParamSpec("static_depth_log_std", _R.static_depth_log_std, "detector's relative depth error in the static "
                  "test: a static triangulation whose depth disagrees by more than 4 sigma is moving", min=0.0),
        ParamSpec("covariance_scale", _R.covariance_scale, "factor on the published pose and velocity covariances "
                  "(the solver's is overconfident: the detector's depth errors persist from frame to frame)", min=1e-6),
        ParamSpec("heading_from_velocity_mps", _R.heading_from_velocity_mps, "moving refined objects at least this "
                  "fast (m/s) take their yaw from the velocity direction (the one nearer the solved yaw); 0 = off", min=0.0),
        ParamSpec("device", "auto", "where the batch is solved", choices=("auto", "cpu", "cuda")),
        ParamSpec("dtype", dtype_name(_R.dtype), "solver precision", choices=tuple(DTYPES)),
        ParamSpec("threads", 1, "torch CPU threads for the solve (more threads thrash next to the detector)", min=1),
        ParamSpec("solve_every_n", _C.solve_every_n, "run the BA every N frames (others publish the last refinement)", min=1),
        ParamSpec("max_stamp_jump_s", _C.max_stamp_jump_s, "a frame stamped more than this after the last one "
                  "(rejected.stamp_gap), or before it (rejected.stamp_backwards: a bag loop), resets the tracklets; "
                  "the frame itself is used", min=1e-3),
        ParamSpec("qos", "reliable", "input/output QoS", choices=("reliable", "sensor_data", "best_effort")),
        ParamSpec("qos_depth", 10, "queue depth", min=1),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("track_buffer_node", **kwargs)
        from ba_perception_msgs.msg import Detection3DArray, ObjectObservationArray

        torch.set_num_threads(self.p["threads"])
        device = self.p["device"]
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise StartupError("device cuda requested but torch sees no CUDA GPU")
        self.stage = TrackBufferStage(TrackBufferConfig.from_params(self.p, device))
        if self.stage.needs_images:
            from sensor_msgs.msg import CompressedImage, Image

            self.images: OrderedDict[int, Any] = OrderedDict()  # stamp_ns -> image message, newest last
            self.images_lock = threading.Lock()
            compressed = self.p["image_transport"] == "compressed"
            self.image_topic = self.p["image_topic"] + ("/compressed" if compressed else "")
            # sensor_data (best effort) matches both reliable and best-effort camera publishers
            self.create_subscription(CompressedImage if compressed else Image, self.image_topic, self.on_image,
                                     qos_profile("sensor_data", 5))
        self.get_logger().info(f"object BA on {device} ({self.p['dtype']}), window {self.p['window']}")
        self.ego = EgoMotionInput(self)
        self.pub = self.create_publisher(Detection3DArray, self.p["output_topic"], self.output_qos())
        self.worker = FrameWorker(self, self.on_input, "frames_dropped_stale")
        self.create_subscription(ObjectObservationArray, self.p["input_topic"],
                                 lambda m: self.worker.put((wall_ns(), m)), self.qos())

    def on_image(self, msg: Any) -> None:
        """Keep the image messages of the last frames by stamp (converted only when a frame uses one)."""
        with self.images_lock:
            self.images[stamp_ns(msg)] = msg
            while len(self.images) > 2 * self.stage.config.tracklets.window + 8:
                self.images.popitem(last=False)
        self.count("images_in")

    def _gray(self, stamp: int) -> np.ndarray | None:
        """The grayscale image with the observations' stamp; None (priors only for this frame) when missing or bad."""
        with self.images_lock:
            msg = self.images.get(stamp)
        if msg is None:  # counted as rejected.klt_image_missing, logged once per throttle period
            self.reject("klt_image_missing", f"no image on {self.image_topic} with the observations' stamp: "
                        "this frame's KLT point tracks are skipped (priors only)")
            return None
        try:
            return image_to_gray(msg)
        except ImageError as err:
            self.reject(f"image_{err.reason}", str(err))
            return None

    def on_input(self, item: tuple[int, Any]) -> None:
        """Refine one observation message (``(received_ns, msg)``) and publish the refined boxes in odom."""
        from ba_perception_msgs.msg import Detection3DArray

        received, msg = item
        start = wall_ns()
        stamp = stamp_ns(msg)
        try:  # first: a frame without odometry (e.g. an absurd stamp) leaves the stage untouched
            T_odom_cam = self.ego.camera_pose(stamp)
        except EgoMotionError as err:
            self.reject("missing_ego_motion", str(err))
            return
        frame = msg_to_observations(msg)
        if not valid_intrinsics(frame.K):
            self.reject("intrinsics", "observation array carries invalid intrinsics")
            return
        gray = self._gray(stamp) if self.stage.needs_images else None
        res = self.stage.step(stamp, to_observations(frame), T_odom_cam, frame.K, gray)
        if res.rejected:
            self.reject(res.rejected, "frame not used by the track buffer")
            return
        if res.reset:  # the frame is used; the tracklets before it were dropped
            self.reject(res.reset, "input stamp went backwards (bag looped?) or jumped more than "
                        f"{self.stage.config.max_stamp_jump_s} s ahead: tracklets reset")
        boxes, unpublishable = publishable_boxes(res.boxes)
        for kind, drops in (("object", res.dropped), ("box", unpublishable)):  # per object, counted each
            for why, n in drops.items():
                self.reject(f"{kind}_{why}", f"{'an observation' if kind == 'object' else 'a refined box'} with a "
                            f"{why.replace('_', ' ')} value was left out", n)
        if res.solved:
            for b in res.boxes:
                self.count("refined" if b.refined else f"unrefined.{b.reason.split(':')[0].replace(' ', '_')}")
                if b.depth_cue:  # which depth source dominated the refined box's depth (depth_cues)
                    self.count(f"depth_cue.{b.depth_cue}")
        out = Detection3DArray(camera_pose=matrix_to_pose(T_odom_cam), image_width=msg.image_width,
                               image_height=msg.image_height, k=list(msg.k))
        out.header.stamp, out.header.frame_id = msg.header.stamp, self.p["odom_frame"]
        out.detections = refined_to_msgs(boxes)
        out.trace = list(msg.trace) + [make_stage("track_buffer", received, start)]
        self.pub.publish(out)
        self.count("frames_out")

    def close(self) -> None:
        """Stop the input worker."""
        self.worker.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(TrackBufferNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
