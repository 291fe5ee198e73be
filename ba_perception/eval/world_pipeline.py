"""The graph's stages in one process over world sequences, for evaluation (`eval-oba`, `eval-track`).

A world sequence is rendered once, the detector runs on every frame, and what the later stages
and the metrics need is cached under ``data/eval_cache/`` (keyed by the world config, the model
file's hash and the decode settings): the observations, the ground truth, the camera poses, the
grayscale images (ORB/KLT) and, per observation matched to a ground-truth object, oracle feature
samples (projections of the object's true surface points, with their ids). The track buffer
(:class:`~ba_perception.core.oba.stage.TrackBufferStage`, what track_buffer_node runs) and the
tracker (``Tracker.step``) are then run from the cache with any settings, so an ablation costs
only the stages it changes.

Frames: observations are in the camera optical frame of their image; refined boxes and tracks in
odom (``core.geometry`` conventions). Ground truth 2D box = ``box_full`` (complete silhouette), as
the detector is trained and scored by ``eval-det``.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.core.detection.backends import file_sha256
from ba_perception.core.oba.refine import RefinedBox
from ba_perception.core.oba.stage import TrackBufferConfig, TrackBufferStage
from ba_perception.core.oba.tracklets import MAX_WINDOW, ObjectTrack, Observation, observations_from_detections
from ba_perception.core.tracking import Detections, Tracker, TrackerConfig, TrackOutput
from ba_perception.core.tracking.matching import hungarian
from ba_perception.eval.detection_ap import iou_2d

CACHE_VERSION = "4"  # bump when what is cached (or how observations are made) changes
ORACLE_SAMPLES = 25  # the detector's 5x5 grid has as many samples
GT_MATCH_IOU = 0.5


class WorldEvalError(RuntimeError):
    """A world evaluation cannot run (bad split name, model missing, nothing to evaluate)."""


@dataclass
class SequenceData:
    """One world sequence with the detector's output, ready for the later stages.

    Attributes:
        name: ``<preset>_<seed>``.
        stamps_ns: ``(F,)`` capture stamps. K: ``(3, 3)`` intrinsics. image_hw: (H, W).
        T_odom_cam: ``(F, 4, 4)`` camera optical frame in odom.
        gt: per frame the world's :class:`~ba_perception.data.world.GroundTruth`.
        observations: per frame the detector's observations (camera frame).
        gt_index: per frame, per observation the matched GT row (-1: none; 2D IoU >= 0.5 with
            ``box_full``, same class, one-to-one by IoU).
        oracle_uv, oracle_ids: per frame, per observation, oracle samples ``(n, 2)`` pixels and
            their surface point ids ``(n,)`` (empty when unmatched).
        gray_png: per frame the grayscale image, PNG bytes (for ORB/KLT).
        detector_ms: per frame detector wall time (preprocess + network + decode), ms.
        sample_points: per frame, per observation ``(n, 3)`` the matched object's surface point
            (object frame, m) under each feature sample; NaN where the sample is off that object.
    """

    name: str
    stamps_ns: np.ndarray
    K: np.ndarray
    image_hw: tuple[int, int]
    T_odom_cam: np.ndarray
    gt: list[Any]
    observations: list[list[Observation]]
    gt_index: list[np.ndarray]
    oracle_uv: list[list[np.ndarray]]
    oracle_ids: list[list[np.ndarray]]
    gray_png: list[bytes] = field(repr=False, default_factory=list)
    detector_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sample_points: list[list[np.ndarray]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def gray(self, i: int) -> np.ndarray:
        """Grayscale ``uint8`` image of frame ``i``."""
        import cv2

        img = cv2.imdecode(np.frombuffer(self.gray_png[i], np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise WorldEvalError(f"{self.name}: frame {i}'s cached grayscale PNG does not decode (delete the cache)")
        return img


# ------------------------------------------------------------------------------------------------
# rendering + detection, cached
# ------------------------------------------------------------------------------------------------
def match_to_gt(boxes: np.ndarray, labels: Sequence[str], gt: Any, min_iou: float = GT_MATCH_IOU) -> np.ndarray:
    """One-to-one match of 2D boxes to ground truth (``box_full``, same class) by IoU; -1 unmatched.

    Only pairs with IoU >= ``min_iou`` compete (maximising the summed IoU over all pairs first
    could leave a clear match unmatched for two weak ones).
    """
    out = np.full(len(boxes), -1, np.int64)
    gb = np.asarray(gt.box_full, np.float64).reshape(-1, 4)
    if not len(boxes) or not len(gb):
        return out
    ok = np.asarray(np.isfinite(gb).all(1))  # (G,) bool; asarray: numpy types .all(1) as scalar-or-array
    iou = iou_2d(np.asarray(boxes, np.float64).reshape(-1, 4), np.where(ok[:, None], gb, 0.0))
    same = np.asarray(labels, dtype=object)[:, None] == np.asarray(gt.class_label, dtype=object)[None, :]
    r, c = hungarian(iou, same & ok[None] & (iou >= min_iou))
    out[r] = c
    return out


def sample_surface_points(frame: Any, row: int, sample_uv: np.ndarray) -> np.ndarray:
    """Object-frame points ``(n, 3)`` under pixel samples of GT object ``row``; NaN off the object (evaluation only)."""
    H, W = frame.depth.shape
    px = np.clip(np.rint(sample_uv).astype(np.int64), 0, [W - 1, H - 1])
    z = frame.depth[px[:, 1], px[:, 0]].astype(np.float64)
    on = (frame.instance[px[:, 1], px[:, 0]] == frame.objects.track_id[row]) & np.isfinite(z)
    p_cam = (np.c_[sample_uv, np.ones(len(px))] @ np.linalg.inv(frame.K).T) * np.where(on, z, 1.0)[:, None]
    T = np.linalg.inv(frame.objects.T_cam_obj[row])
    p = p_cam @ T[:3, :3].T + T[:3, 3]
    p[~on] = np.nan
    return p


def oracle_samples(frame: Any, track_id: int, n: int = ORACLE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and ids of up to ``n`` visible true surface points of one object (evaluation only).

    The lowest-index visible points of the world's fixed per-object point set are taken, so the
    same points recur from frame to frame while they stay visible.
    """
    from ba_perception.data.world import visible_surface_points

    idx, uv = visible_surface_points(frame, track_id)
    return uv[:n].astype(np.float32), idx[:n].astype(np.int64)


def _code_hash() -> str:
    """Hash of the detection code whose output is cached (a decode change must not reuse old results)."""
    from ba_perception.core.detection import decode, detector, preprocess

    h = hashlib.sha1()
    for mod in (decode, detector, preprocess):
        h.update(Path(inspect.getfile(mod)).read_bytes())
    return h.hexdigest()[:12]


def prepare_sequence(world_cfg: Any, detector: Any, model_hash: str, cache_dir: Path | None,
                     log: Callable[[str], None] = print) -> SequenceData:
    """Render a world sequence, run the detector on it and make oracle samples; cached on disk.

    Args:
        world_cfg: a :class:`~ba_perception.data.world.WorldConfig`.
        detector: a :class:`~ba_perception.core.detection.detector.Detector`.
        model_hash: identifies the weights in the cache key.
        cache_dir: where to keep the result (None: no cache).
    """
    import cv2

    from ba_perception.data.synth import WORLD_VERSION
    from ba_perception.data.world import World

    key_src = repr((CACHE_VERSION, WORLD_VERSION, repr(world_cfg), model_hash, repr(detector.decode_cfg), _code_hash()))
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    name = f"{world_cfg.preset}_{world_cfg.seed}"
    path = None if cache_dir is None else Path(cache_dir) / f"{name}_{key}.pkl"
    if path is not None and path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    t0 = time.perf_counter()
    stamps, poses, gts, obs_all, gidx, ouv, oid, gray, det_ms, spts = [], [], [], [], [], [], [], [], [], []
    with World(world_cfg) as world:
        for i in range(world_cfg.n_frames):
            fr = world.render(i)
            t1 = time.perf_counter()
            res = detector.detect(fr.image, fr.K)
            det_ms.append((time.perf_counter() - t1) * 1e3)
            obs = observations_from_detections(res.detections, res.class_names)
            g = match_to_gt(np.array([o.box_2d for o in obs]).reshape(-1, 4), [o.class_label for o in obs], fr.objects)
            uvs, ids = [], []
            for j in g:  # g: one GT index (or -1) per observation
                if j >= 0 and int(fr.objects.track_id[j]) in fr.surface_points:
                    u, k = oracle_samples(fr, int(fr.objects.track_id[j]))
                else:
                    u, k = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
                uvs.append(u)
                ids.append(k)
            spts.append([sample_surface_points(fr, int(j), np.asarray(o.sample_uv, np.float64)) if j >= 0
                         else np.full((len(o.sample_uv), 3), np.nan) for o, j in zip(obs, g)])
            stamps.append(fr.stamp_ns)
            poses.append(fr.T_odom_cam)
            gts.append(fr.objects)
            obs_all.append(obs)
            gidx.append(g)
            ouv.append(uvs)
            oid.append(ids)
            gray.append(cv2.imencode(".png", cv2.cvtColor(fr.image, cv2.COLOR_RGB2GRAY))[1].tobytes())
            K, hw = fr.K, fr.image.shape[:2]
    seq = SequenceData(name, np.array(stamps, np.int64), K, (int(hw[0]), int(hw[1])), np.stack(poses), gts,
                       obs_all, gidx, ouv, oid, gray, np.array(det_ms), spts)
    log(f"  {name}: rendered + detected {len(seq)} frames in {time.perf_counter() - t0:.1f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(seq, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return seq


def load_split(split: str, presets: Sequence[str] | None, sequences: int | None, frames: int | None,
               model: Path, backend: str, threads: int, decode: Any, cache_dir: Path | None,
               width: int = 1242, height: int = 375, log: Callable[[str], None] = print) -> list[SequenceData]:
    """Every sequence of a world split (as ``ba-perception synth`` plans it) through the detector.

    Raises:
        WorldEvalError: unknown split, missing model, or a backend that cannot be created.
    """
    from ba_perception.core.detection.backends import BackendError, create_backend
    from ba_perception.core.detection.detector import Detector
    from ba_perception.data.synth import SPLITS, plan
    from ba_perception.data.world import PRESETS, WorldConfig

    if split not in SPLITS:
        raise WorldEvalError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    bad = [p for p in presets or () if p not in PRESETS]
    if bad:
        raise WorldEvalError(f"unknown preset {bad[0]!r}; choose from {', '.join(PRESETS)}")
    if not model.is_file():
        raise WorldEvalError(f"model {model} not found (the shipped one is models/detector.onnx)")
    is_checkpoint = model.suffix == ".pt"
    try:
        be = create_backend(backend, threads=threads, checkpoint=model if is_checkpoint else None,
                            onnx_path=None if is_checkpoint else model)
    except BackendError as err:
        raise WorldEvalError(str(err)) from err
    torch.set_num_threads(max(1, threads))
    det = Detector(be, decode)
    cfgs = plan(split, list(presets or PRESETS), sequences, frames, WorldConfig(width=width, height=height))
    mh = file_sha256(model)[:16]
    log(f"world split {split!r}: {len(cfgs)} sequences x {cfgs[0].n_frames} frames, detector {model} [{be.name}]")
    return [prepare_sequence(c, det, mh, cache_dir, log) for c in cfgs]


def bias_depth(seq: SequenceData, factor: float) -> SequenceData:
    """The sequence with the detector's depth scaled by ``factor`` (a detector biased as on another camera).

    Every observation's centre moves along its viewing ray to ``factor`` times its distance and its
    ``depth_std`` scales with it; the 2D box, orientation, size and feature samples stay. ``1`` returns
    the sequence itself.
    """
    if factor == 1.0:
        return seq
    obs = [[replace(o, center_cam=np.asarray(o.center_cam, np.float64) * factor, depth_std=float(o.depth_std) * factor)
            for o in frame] for frame in seq.observations]
    return replace(seq, name=seq.name, observations=obs)


# ------------------------------------------------------------------------------------------------
# track buffer
# ------------------------------------------------------------------------------------------------
@dataclass
class ObaVariant:
    """One way of running the track buffer.

    Attributes:
        correspondences: ``descriptor`` (learned), ``orb``, ``klt``, ``oracle`` or ``none``.
        scene_static: one pose for all frames of every object (scene-level BA, no object motion).
        depth_cues: the refinement's ``depth_cues`` (None: the configuration's).
    """

    correspondences: str = "descriptor"
    scene_static: bool = False
    depth_cues: str | None = None


@dataclass
class FrameBoxes3D:
    """The track buffer's output of one frame, aligned with the frame's observations.

    Attributes:
        boxes: one :class:`RefinedBox` per observation (unrefined ones carry the detection).
        obs_index: index of each box's observation in the frame.
        seconds: track buffer wall time (association + refinement).
    """

    boxes: list[RefinedBox]
    obs_index: np.ndarray
    seconds: float


class OrbPointTracker:
    """ORB point tracks over each tracklet's window (evaluation-side, OpenCV), as the stage's point tracker.

    Grayscale images and ORB features by (frame, box) are kept between frames.
    """

    def __init__(self, seq: SequenceData, num_points: int) -> None:
        self.seq, self.num_points = seq, num_points
        self.frame_of = {int(s): i for i, s in enumerate(seq.stamps_ns)}
        self.cache: dict = {}

    def reset(self) -> None:
        """Forget every cached image and feature set (the stream restarted)."""
        self.cache = {}

    def step(self, stamp_ns: int, gray: np.ndarray, tracks: list[ObjectTrack]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Point tracks over the window of each tracklet with two or more frames, by tracklet id.

        Args:
            stamp_ns: stamp of the newest frame (one of the sequence's frames).
            gray: the newest frame's grayscale image.
            tracks: the tracklets after association of the newest frame.
        """
        from ba_perception.core.oba.correspondences import orb_features, orb_tracks

        cache, out = self.cache, {}
        newest = self.frame_of[int(stamp_ns)]
        cache.setdefault(newest, gray)
        for t in tracks:
            if len(t.frames) < 2:
                continue
            idx = [self.frame_of[f.stamp_ns] for f in t.frames]
            for i in idx:
                if i not in cache:
                    cache[i] = self.seq.gray(i)
            boxes = np.stack([np.asarray(f.observation.box_2d, np.float64) for f in t.frames])
            feats = []
            for i, b in zip(idx, boxes):
                key = (i, tuple(b.tolist()))
                if key not in cache:
                    cache[key] = orb_features(cache[i], b, max(2 * self.num_points, 32))
                feats.append(cache[key])
            out[t.tracklet_id] = orb_tracks([], boxes, self.num_points, features=feats)
        for k in [k for k in cache if (k[0] if isinstance(k, tuple) else k) < newest - 2 * MAX_WINDOW]:
            del cache[k]
        return out


def run_track_buffer(seq: SequenceData, variant: ObaVariant, config: TrackBufferConfig) -> list[FrameBoxes3D]:
    """Run the track buffer's per-frame step (:class:`TrackBufferStage`, the node's) over a sequence.

    The variant sets the correspondences (``orb``: :class:`OrbPointTracker`; ``oracle``: the
    observations carry the true surface points' ids) and ``scene_static``.
    """
    rc = replace(config.refine, correspondences=variant.correspondences, scene_static=variant.scene_static)
    if variant.depth_cues is not None:
        rc = replace(rc, depth_cues=variant.depth_cues)
    orb = OrbPointTracker(seq, rc.num_points) if variant.correspondences == "orb" else None
    stage = TrackBufferStage(replace(config, refine=rc), point_tracker=orb)
    out = []
    for i in range(len(seq)):
        obs = seq.observations[i]
        if variant.correspondences == "oracle":
            obs = [replace(o, sample_uv=u, sample_point_ids=k, descriptors=np.zeros((len(u), 0), np.float32))
                   for o, u, k in zip(obs, seq.oracle_uv[i], seq.oracle_ids[i])]
        res = stage.step(int(seq.stamps_ns[i]), obs, seq.T_odom_cam[i], seq.K, seq.gray(i) if stage.needs_images else None)
        by_id = {b.tracklet_id: b for b in res.boxes}
        idx = [k for k, a in enumerate(res.assignment) if a in by_id]
        out.append(FrameBoxes3D([by_id[res.assignment[k]] for k in idx], np.array(idx, np.int64), sum(res.seconds.values())))
    return out


# ------------------------------------------------------------------------------------------------
# tracker
# ------------------------------------------------------------------------------------------------
def observations_to_detections(obs: Sequence[Observation], T_odom_cam: np.ndarray) -> Detections:
    """Single-frame observations -> tracker input in odom (tracker_node with ``input_type: observations``)."""
    if not obs:
        return Detections.empty()
    yaw = geometry.yaw_from_rotation_cam(torch.as_tensor(np.stack([o.R_cam_obj for o in obs]))).numpy()
    return Detections.from_camera(
        T_odom_cam, np.stack([o.center_cam for o in obs]), yaw, np.array([o.depth_std for o in obs]),
        np.array([o.lateral_std for o in obs]), np.stack([o.size_lwh for o in obs]), [o.class_label for o in obs],
        np.array([o.score for o in obs]), np.stack([np.asarray(o.box_2d, np.float64) for o in obs]),
        [o.embedding for o in obs])


def run_tracker(seq: SequenceData, inputs: Sequence[Detections], config: TrackerConfig) -> tuple[list[list[TrackOutput]], list[float]]:
    """``Tracker.step`` over a sequence; per frame the outputs and the step time (s)."""
    tracker = Tracker(config)
    out, times = [], []
    for i, d in enumerate(inputs):
        t0 = time.perf_counter()
        out.append(tracker.step(int(seq.stamps_ns[i]), d))
        times.append(time.perf_counter() - t0)
    return out, times
