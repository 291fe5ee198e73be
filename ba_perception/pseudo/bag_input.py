"""Labelled sequences from rosbag2 folders: camera, camera_info, odometry, mounting, plus 2D boxes with track ids.

The 2D labels come from the bag's ``/ground_truth/objects`` (the synthetic world's complete-silhouette
boxes, ``box_2d_full``) or from a KITTI tracking label file whose frame numbers count the bag's
images from 0. Camera poses are ``T_odom_cam = T_odom_base @ T_base_cam`` from ``/odom`` (nearest
stamp) and the ``/tf_static`` mounting, never from ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ba_perception.core.geometry import matrix_from_quaternion
from ba_perception.data.bag import (
    TOPIC_GT,
    TOPIC_IMAGE,
    TOPIC_INFO,
    TOPIC_ODOM,
    camera_mount,
    ground_truth_from_message,
    open_reader,
    typestore,
)
from ba_perception.pseudo.reconstruct import LabelFrame


class BagInputError(RuntimeError):
    """A bag lacks what pseudo-labelling needs (images, camera_info, odometry, mounting, labels)."""


def _pose(p) -> np.ndarray:
    T = np.eye(4)
    q = p.orientation
    T[:3, :3] = matrix_from_quaternion(torch.tensor([q.x, q.y, q.z, q.w], dtype=torch.float64)).numpy()
    T[:3, 3] = [p.position.x, p.position.y, p.position.z]
    return T


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def read_kitti_boxes(path: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray, list[str]]]:
    """``{frame: (boxes (N, 4), track_ids (N,), classes)}`` of a KITTI tracking label file (DontCare skipped)."""
    per: dict[int, list] = {}
    for n, ln in enumerate(Path(path).read_text().splitlines(), 1):
        f = ln.split()
        if not f:
            continue
        if len(f) < 10:
            raise BagInputError(f"{path}:{n}: not a KITTI tracking label line")
        if f[2] == "DontCare":
            continue
        per.setdefault(int(f[0]), []).append((np.array([float(x) for x in f[6:10]]), int(f[1]), f[2].lower()))
    return {k: (np.stack([b for b, _, _ in v]), np.array([t for _, t, _ in v], np.int64), [c for _, _, c in v])
            for k, v in per.items()}


def read_labelled_bag(path: str | Path, labels2d: str | Path | None = None, max_frames: int | None = None,
                      odom_noise: tuple[float, float] | None = None, seed: int = 0
                      ) -> tuple[list[LabelFrame], list[Any]]:
    """Frames of a bag with their 2D labels, and the ground truth when the bag has it.

    Args:
        path: rosbag2 folder.  labels2d: KITTI tracking label file, or None for the bag's ground-truth boxes.
        max_frames: stop after this many frames.
        odom_noise: ``(metres, degrees)`` per-frame std of a random walk added to the odometry
            (translation in x/y, yaw), to measure the effect of pose noise.  seed: its seed.

    Returns:
        ``(frames, gts)``: ``list[LabelFrame]`` and the per-frame ground truth (None entries if absent).

    Raises:
        BagInputError: missing images, camera_info, odometry or mounting, or no 2D labels.
    """
    T_base_cam = camera_mount(path)
    if T_base_cam is None:
        raise BagInputError(f"{path}: no base_link -> camera transform in /tf_static (camera mounting unknown)")
    kitti = read_kitti_boxes(labels2d) if labels2d else None
    images, infos, odoms, gts = _read_messages(path, kitti is not None, max_frames)
    if not images or not odoms or not infos:
        raise BagInputError(f"{path}: no frames with image, camera_info and odometry")
    o_st = np.array([s for s, _ in odoms])
    o_T = np.stack([T for _, T in odoms])
    if odom_noise is not None:
        o_T = _noisy_odometry(o_T, odom_noise[0], odom_noise[1], seed)
    i_st = np.array(sorted(infos))
    frames, truth = [], []
    for k, (st, img) in enumerate(images):
        j = int(np.argmin(np.abs(o_st - st)))
        K = infos[int(i_st[int(np.argmin(np.abs(i_st - st)))])]
        gt = None
        if st in gts:
            _, gt = ground_truth_from_message(gts[st])
        if kitti is not None:
            boxes, tids, cls = kitti.get(k, (np.zeros((0, 4)), np.zeros(0, np.int64), []))
        elif gt is not None:
            ok = np.isfinite(gt.box_full).all(1)
            boxes, tids, cls = gt.box_full[ok], gt.track_id[ok], [c for c, o in zip(gt.class_label, ok) if o]
        else:
            boxes, tids, cls = np.zeros((0, 4)), np.zeros(0, np.int64), []
        frames.append(LabelFrame(img, K, o_T[j] @ T_base_cam, boxes, tids, cls, o_T[j]))
        truth.append(gt)
    return frames, truth


def _read_messages(path: str | Path, have_labels: bool, max_frames: int | None
                   ) -> tuple[list[tuple[int, np.ndarray]], dict[int, np.ndarray], list[tuple[int, np.ndarray]], dict[int, Any]]:
    """The bag's images, intrinsics, odometry and ground-truth messages, each keyed by its stamp (ns).

    Args:
        path: rosbag2 folder.  have_labels: 2D labels come from a file (the ground-truth topic is optional).
        max_frames: images after this many are skipped.

    Returns:
        ``(images, infos, odoms, gts)``: ``[(stamp, RGB or mono image)]``, ``{stamp: K (3, 3)}``,
        ``[(stamp, T_odom_base (4, 4))]`` and ``{stamp: ground-truth message}``.

    Raises:
        BagInputError: a needed topic is missing, or an unsupported image encoding.
    """
    store = typestore()
    reader = open_reader(path)
    images: list[tuple[int, np.ndarray]] = []
    infos: dict[int, np.ndarray] = {}
    odoms: list[tuple[int, np.ndarray]] = []
    gts: dict[int, Any] = {}
    try:
        topics = {TOPIC_IMAGE, TOPIC_INFO, TOPIC_ODOM, TOPIC_GT}
        conns = [c for c in reader.connections if c.topic in topics]
        present = {c.topic for c in conns}
        for need in (TOPIC_IMAGE, TOPIC_INFO, TOPIC_ODOM):
            if need not in present:
                raise BagInputError(f"{path}: no {need} topic")
        if not have_labels and TOPIC_GT not in present:
            raise BagInputError(f"{path}: no {TOPIC_GT} topic; give the 2D labels with --labels2d FILE")
        for conn, _, raw in reader.messages(connections=conns):
            msg: Any = store.deserialize_cdr(raw, conn.msgtype)
            st = _stamp(msg)
            if conn.topic == TOPIC_IMAGE:
                if max_frames is not None and len(images) >= max_frames:
                    continue
                images.append((st, _image(msg, path)))
            elif conn.topic == TOPIC_INFO:
                infos[st] = np.asarray(msg.k, np.float64).reshape(3, 3)
            elif conn.topic == TOPIC_ODOM:
                odoms.append((st, _pose(msg.pose.pose)))
            else:
                gts[st] = msg
    finally:
        reader.close()
    return images, infos, odoms, gts


def _image(msg: Any, path: str | Path) -> np.ndarray:
    """The ``(H, W, 3)`` RGB or ``(H, W)`` mono uint8 image of a sensor_msgs/Image (rgb8, bgr8 or mono8)."""
    if msg.encoding not in ("rgb8", "bgr8", "mono8"):
        raise BagInputError(f"{path}: image encoding {msg.encoding!r}; rgb8, bgr8 or mono8 supported")
    ch = 1 if msg.encoding == "mono8" else 3
    img = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * ch]
    img = img.reshape(msg.height, msg.width, ch)
    img = img[:, :, 0] if ch == 1 else (img[:, :, ::-1] if msg.encoding == "bgr8" else img)
    return np.ascontiguousarray(img)


def _noisy_odometry(T: np.ndarray, sigma_m: float, sigma_deg: float, seed: int) -> np.ndarray:
    """Odometry with a random walk: each frame-to-frame motion gets N(0, sigma_m) in x/y and N(0, sigma_deg) in yaw."""
    rng = np.random.default_rng(seed)
    out = T.copy()
    n = len(T)
    rel = np.linalg.inv(T[:-1]) @ T[1:]
    dyaw = np.radians(rng.normal(0, sigma_deg, n - 1))
    dxy = rng.normal(0, sigma_m, (n - 1, 2))
    for i in range(n - 1):
        c, s = np.cos(dyaw[i]), np.sin(dyaw[i])
        E = np.eye(4)
        E[:2, :2] = [[c, -s], [s, c]]
        E[:2, 3] = dxy[i]
        out[i + 1] = out[i] @ rel[i] @ E
    return out
