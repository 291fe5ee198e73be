"""Synthetic tracking scenes: ground-truth trajectories and noisy, occluded 3D detections per frame.

A static camera sits at the odom origin, ``camera_height_m`` above the ground, looking along
odom +x. Objects move on the ground plane (centre ``z = h/2``) under near-constant velocity.
A detection is produced for each object that is in view and not hidden behind a nearer object
(2D overlap of its box by nearer boxes above ``occlusion_iou``), then dropped with
``miss_prob``; centres get depth-dependent noise; embeddings are a per-object base vector plus
noise, with a shared component between objects so appearance alone is ambiguous. Used by
``bench tracker``, the tracker tests and ``eval-track --simulate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ba_perception.core.tracking.types import Detections

PRESETS = ("crossing", "crowded", "bench")

# Sizes (l, w, h) per class, metres.
_SIZES = {"car": (4.2, 1.8, 1.5), "pedestrian": (0.6, 0.6, 1.75), "cyclist": (1.8, 0.6, 1.7)}


class SimError(ValueError):
    """Raised for an unknown preset or invalid simulation parameters."""


@dataclass
class SimParams:
    """Noise and camera parameters of a synthetic scene.

    Attributes:
        fps: frame rate, Hz. fx, cx, cy, width, height: pinhole camera (fy = fx), pixels.
        camera_height_m: camera above the ground, metres.
        depth_noise_frac, lateral_noise_m: centre noise std along the ray (fraction of depth) and
            across it, metres.
        miss_prob: probability a visible object is not detected. fp_rate: mean false positives per frame.
        occlusion_iou: fraction of a box covered by nearer boxes above which it is not detected.
        emb_dim: embedding size. emb_noise: per-frame embedding noise. emb_shared: weight of the
            component shared by all objects of a class (0 = unrelated looks, 1 = identical).
        accel_std: random acceleration of the objects, m/s^2. turn_accel: acceleration that
            brings objects leaving the scene's area back, m/s^2.
        ego_jitter_m: std of a per-frame offset shared by all detections of a frame (ego-motion /
            camera pose error), metres in x and y; not included in the detection covariance.
        all_visible: detect every object, in view or not (constant load for benchmarks).
    """

    fps: float = 10.0
    fx: float = 720.0
    cx: float = 640.0
    cy: float = 360.0
    width: int = 1280
    height: int = 720
    camera_height_m: float = 1.6
    depth_noise_frac: float = 0.03
    lateral_noise_m: float = 0.08
    miss_prob: float = 0.05
    fp_rate: float = 0.3
    occlusion_iou: float = 0.6
    emb_dim: int = 32
    emb_noise: float = 0.4
    emb_shared: float = 0.6
    accel_std: float = 0.3
    turn_accel: float = 1.5
    ego_jitter_m: float = 0.0
    all_visible: bool = False


@dataclass
class SimFrame:
    """One frame of a synthetic scene.

    Attributes:
        stamp_ns: capture stamp. detections: the noisy detections given to the tracker.
        det_gt: ``(N,)`` ground-truth object id of each detection, -1 for false positives.
        gt_ids, gt_centers, gt_labels, gt_boxes_2d: visible ground-truth objects of the frame
            (id ``(M,)``, centre ``(M, 3)`` odom, labels, image boxes ``(M, 4)``).
    """

    stamp_ns: int
    detections: Detections
    det_gt: np.ndarray
    gt_ids: np.ndarray
    gt_centers: np.ndarray
    gt_labels: list[str]
    gt_boxes_2d: np.ndarray


def _initial_objects(preset: str, n_objects: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Start positions ``(M, 3)``, velocities ``(M, 3)`` and labels for a preset."""
    if preset == "crossing":
        # Two pedestrians one metre apart in depth walk across each other's path (the nearer one
        # hides the farther one for a few frames around the crossing).
        pos = np.array([[12.0, 4.0, 0.0], [13.5, -4.0, 0.0]])
        vel = np.array([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
        labels = ["pedestrian", "pedestrian"]
    elif preset == "crowded":
        m = n_objects
        labels = list(rng.choice(["pedestrian"] * 4 + ["cyclist"], size=m))
        pos = np.stack([rng.uniform(8, 30, m), rng.uniform(-10, 10, m), np.zeros(m)], axis=1)
        heading = rng.uniform(-math.pi, math.pi, m)
        speed = np.where(np.array(labels) == "cyclist", rng.uniform(2.5, 5, m), rng.uniform(0.8, 1.8, m))
        vel = np.stack([speed * np.cos(heading), speed * np.sin(heading), np.zeros(m)], axis=1)
    elif preset == "bench":
        m = n_objects
        labels = list(rng.choice(["car", "car", "pedestrian", "cyclist"], size=m))
        x = rng.uniform(10, 90, m)
        pos = np.stack([x, rng.uniform(-0.75, 0.75, m) * x * 640.0 / 720.0, np.zeros(m)], axis=1)
        heading = rng.uniform(-math.pi, math.pi, m)
        speed = np.array([{"car": 8.0, "pedestrian": 1.3, "cyclist": 4.0}[c] for c in labels]) * rng.uniform(0.5, 1.5, m)
        vel = np.stack([speed * np.cos(heading), speed * np.sin(heading), np.zeros(m)], axis=1)
    else:
        raise SimError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    return pos, vel, labels


def _project_boxes(centers: np.ndarray, yaws: np.ndarray, sizes: np.ndarray, p: SimParams) -> tuple[np.ndarray, np.ndarray]:
    """Image boxes ``(M, 4)`` of odom boxes seen from the sim camera and an in-view mask ``(M,)``."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    c, s = np.cos(yaws), np.sin(yaws)
    local = 0.5 * signs[None] * sizes[:, None, :]  # (M, 8, 3)
    xo = c[:, None] * local[..., 0] - s[:, None] * local[..., 1] + centers[:, None, 0]
    yo = s[:, None] * local[..., 0] + c[:, None] * local[..., 1] + centers[:, None, 1]
    zo = local[..., 2] + centers[:, None, 2] - p.camera_height_m
    # odom (x fwd, y left, z up) -> optical (x right, y down, z fwd): (-y, -z, x)
    zc = xo
    ok = (zc > 0.5).all(1)
    zc_safe = np.where(zc > 0.5, zc, 1.0)
    u = p.fx * (-yo) / zc_safe + p.cx
    v = p.fx * (-zo) / zc_safe + p.cy
    box = np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], axis=1)
    inside = ok & (box[:, 2] > 0) & (box[:, 0] < p.width) & (box[:, 3] > 0) & (box[:, 1] < p.height)
    box = np.stack([np.clip(box[:, 0], 0, p.width), np.clip(box[:, 1], 0, p.height),
                    np.clip(box[:, 2], 0, p.width), np.clip(box[:, 3], 0, p.height)], axis=1)
    return box, inside


def _occluded(box: np.ndarray, depth: np.ndarray, visible: np.ndarray, thresh: float) -> np.ndarray:
    """Objects whose box area is covered more than ``thresh`` by a single nearer visible box."""
    lt = np.maximum(box[:, None, :2], box[None, :, :2])
    rb = np.minimum(box[:, None, 2:], box[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = np.clip(box[:, 2:] - box[:, :2], 1e-9, None).prod(-1)
    cover = inter / area[:, None]  # [i, j]: fraction of i covered by j
    nearer = depth[None, :] < depth[:, None]
    return ((cover > thresh) & nearer & visible[None, :]).any(1)


def simulate(
    preset: str = "crowded",
    n_frames: int = 100,
    n_objects: int = 20,
    seed: int = 0,
    params: SimParams | None = None,
) -> list[SimFrame]:
    """Generate a synthetic scene.

    Args:
        preset: ``crossing`` (two pedestrians crossing with an occlusion gap), ``crowded``
            (``n_objects`` pedestrians/cyclists in a 22 x 20 m area), ``bench`` (``n_objects``
            mixed objects spread over the field of view 10-90 m ahead, the benchmark's load).
        n_frames: number of frames. seed: RNG seed. params: noise and camera settings.

    Raises:
        SimError: unknown preset or ``n_frames < 1``.
    """
    if n_frames < 1:
        raise SimError("n_frames must be >= 1")
    p = params or SimParams()
    rng = np.random.default_rng(seed)
    pos, vel, labels = _initial_objects(preset, n_objects, rng)
    m = pos.shape[0]
    lab_arr = np.array(labels, dtype=object)
    sizes = np.array([_SIZES[c] for c in labels]) * rng.uniform(0.9, 1.1, (m, 3))
    pos[:, 2] = sizes[:, 2] / 2
    shared = {c: _unit(rng.normal(size=p.emb_dim)) for c in _SIZES}
    base = np.stack([_unit(p.emb_shared * shared[c] + (1 - p.emb_shared) * _unit(rng.normal(size=p.emb_dim))) for c in labels])
    lo, hi = pos[:, :2].min(0) - 2, pos[:, :2].max(0) + 2
    dt = 1.0 / p.fps
    frames: list[SimFrame] = []
    for k in range(n_frames):
        if k:
            if preset != "crossing":
                vel[:, :2] += rng.normal(0, p.accel_std * dt, (m, 2))
                # Objects outside the scene's area turn back (steady acceleration towards it), so
                # the density stays constant without unphysical instant reversals.
                back = np.where(pos[:, :2] < lo, 1.0, np.where(pos[:, :2] > hi, -1.0, 0.0))
                vel[:, :2] += back * p.turn_accel * dt
            pos = pos + vel * dt
        yaws = np.arctan2(vel[:, 1], vel[:, 0])
        box, inside = _project_boxes(pos, yaws, sizes, p)
        depth = pos[:, 0]
        occl = _occluded(box, depth, inside, p.occlusion_iou)
        visible = np.ones(m, dtype=bool) if p.all_visible else inside & ~occl
        detected = visible & (rng.random(m) >= p.miss_prob)
        di = np.nonzero(detected)[0]
        # Noise: along the viewing ray (depth) and across it.
        ray = pos[di] - np.array([0, 0, p.camera_height_m])
        ray /= np.linalg.norm(ray, axis=1, keepdims=True)
        sd = p.depth_noise_frac * depth[di] + 0.05
        lateral = rng.normal(0, p.lateral_noise_m, (di.size, 3)) * (1 - np.abs(ray))
        centers = pos[di] + ray * rng.normal(0, 1, (di.size, 1)) * sd[:, None] + lateral
        centers[:, :2] += rng.normal(0, p.ego_jitter_m, 2) if p.ego_jitter_m > 0 else 0.0
        cov = np.einsum("ni,nj->nij", ray, ray) * (sd**2)[:, None, None] + np.eye(3) * p.lateral_noise_m**2
        emb = base[di] + rng.normal(0, p.emb_noise / math.sqrt(p.emb_dim), (di.size, p.emb_dim))  # |noise| ~ emb_noise
        dyaw = rng.normal(0, 0.1, di.size)
        dsize = sizes[di] * rng.normal(1, 0.05, (di.size, 3))
        boxes = box[di] + rng.normal(0, 2.0, (di.size, 4))
        det_lab = list(lab_arr[di])
        det_gt = di.copy()
        nfp = rng.poisson(p.fp_rate)
        if nfp:
            fpl = list(rng.choice(labels, size=nfp))
            fp_pos = np.stack([rng.uniform(lo[0], hi[0], nfp), rng.uniform(lo[1], hi[1], nfp), np.full(nfp, 0.8)], axis=1)
            fp_size = np.array([_SIZES[c] for c in fpl])
            fp_box, _ = _project_boxes(fp_pos, np.zeros(nfp), fp_size, p)
            centers = np.concatenate([centers, fp_pos])
            cov = np.concatenate([cov, np.tile(np.eye(3) * 0.25, (nfp, 1, 1))])
            emb = np.concatenate([emb, rng.normal(size=(nfp, p.emb_dim))])
            dyaw = np.concatenate([dyaw, rng.uniform(-3, 3, nfp)])
            dsize = np.concatenate([dsize, fp_size])
            boxes = np.concatenate([boxes, fp_box])
            det_lab += fpl
            det_gt = np.concatenate([det_gt, np.full(nfp, -1)])
            yaw_all = np.concatenate([yaws[di], np.zeros(nfp)])
        else:
            yaw_all = yaws[di]
        scores = np.clip(rng.normal(0.8, 0.1, centers.shape[0]), 0.05, 1.0)
        det = Detections(
            centers=centers, yaws=yaw_all + dyaw, sizes=dsize, labels=det_lab, scores=scores,
            boxes_2d=boxes, embeddings=emb / np.linalg.norm(emb, axis=1, keepdims=True), covariances=cov,
        )
        vi = np.nonzero(visible)[0]
        frames.append(SimFrame(
            stamp_ns=int(round(k * dt * 1e9)), detections=det, det_gt=det_gt.astype(np.int64),
            gt_ids=vi.astype(np.int64), gt_centers=pos[vi].copy(), gt_labels=list(lab_arr[vi]), gt_boxes_2d=box[vi],
        ))
    return frames


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)
