"""Detector results <-> ba_perception_msgs/ObjectObservationArray (camera optical frame)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.ros.convert import box_problem, matrices_to_poses, pose_to_matrix

MAX_EMBEDDING_DIM = 4096  # longest appearance embedding accepted per object (longer ones are ignored, counted)


@dataclass
class FrameObservations:
    """Observations of one frame as arrays (the track buffer's input).

    Attributes:
        stamp_ns: capture stamp; K: ``(3, 3)``; image_wh: ``(W, H)``.
        labels: class names; scores ``(N,)``; box_2d ``(N, 4)`` pixels.
        center_cam ``(N, 3)`` m; yaw ``(N,)`` KITTI rotation_y; size_lwh ``(N, 3)`` m.
        depth_std, lateral_std (m), yaw_std (rad): ``(N,)``.
        embedding ``(N, E)``; sample_uv ``(N, S, 2)`` px; descriptors ``(N, S, D)``.
    """

    stamp_ns: int
    K: np.ndarray
    image_wh: tuple[int, int]
    labels: list[str]
    scores: np.ndarray
    box_2d: np.ndarray
    center_cam: np.ndarray
    yaw: np.ndarray
    size_lwh: np.ndarray
    depth_std: np.ndarray
    lateral_std: np.ndarray
    yaw_std: np.ndarray
    embedding: np.ndarray
    sample_uv: np.ndarray
    descriptors: np.ndarray


def detections_to_msg(det: Any, names: list[str], header: Any, K: np.ndarray, image_wh: tuple[int, int]) -> Any:
    """``core.detection.decode.Detections`` -> ObjectObservationArray (trace left empty)."""
    from ba_perception_msgs.msg import ObjectObservation, ObjectObservationArray

    out = ObjectObservationArray(header=header, image_width=int(image_wh[0]), image_height=int(image_wh[1]),
                                 k=[float(v) for v in np.asarray(K, dtype=np.float64).reshape(9)])
    n = len(det)
    if n == 0:
        return out
    R = geometry.rotation_cam_from_yaw(det.yaw.double())
    poses = matrices_to_poses(geometry.make_pose(R, det.center_cam.double()).numpy())
    box = det.box_2d.float().numpy()
    size = det.size_lwh.double().numpy()
    emb = det.embedding.float().numpy()
    uv = det.sample_uv.float().numpy()
    desc = det.descriptors.float().numpy()
    scores = det.scores.float().numpy()
    d_std, l_std, y_std = (t.float().numpy() for t in (det.depth_std, det.lateral_std, det.yaw_std))
    for i in range(n):
        o = ObjectObservation(class_label=names[i], score=float(scores[i]), box_2d=box[i].tolist(),
                              pose=poses[i], depth_std=float(d_std[i]), lateral_std=float(l_std[i]),
                              yaw_std=float(y_std[i]), descriptor_dim=int(desc.shape[-1]))
        o.size.x, o.size.y, o.size.z = (float(v) for v in size[i])
        o.embedding = emb[i].ravel().tolist()
        o.sample_uv = uv[i].ravel().tolist()
        o.descriptors = desc[i].ravel().tolist()
        out.observations.append(o)
    return out


def observation_problem(o: Any) -> str | None:
    """Say why one ObjectObservation cannot be used.

    Why one ObjectObservation cannot be used (None when it can): a bad pose (see
    :func:`~ba_perception.ros.convert.pose_problem`), a size that is not finite and positive, or a
    non-finite score, 2D box or standard deviation.
    """
    why = box_problem(o)
    if why is not None:
        return why
    vals = (o.score, o.depth_std, o.lateral_std, o.yaw_std, *o.box_2d)
    if not all(math.isfinite(v) for v in vals):
        return "score, 2D box or standard deviations contain NaN/inf"
    return None


def common_length(seqs: list[Any], limit: int = MAX_EMBEDDING_DIM) -> tuple[int, list[bool]]:
    """The most common non-zero length (at most ``limit``) of ``seqs`` and which of them have it.

    Per-object arrays (embeddings) of a message must share one length; the majority wins and the
    others are treated as missing (the caller counts them).
    """
    lengths = Counter(len(e) for e in seqs if 0 < len(e) <= limit)
    E = lengths.most_common(1)[0][0] if lengths else 0
    return E, [len(e) == E and E > 0 for e in seqs]


def msg_to_observations(msg: Any, on_reject: Callable[[str, str], None] | None = None) -> FrameObservations:
    """ObjectObservationArray -> :class:`FrameObservations` (arrays, camera optical frame).

    Objects are validated one by one (:func:`observation_problem`): a bad one is left out and reported
    as ``on_reject("bad_observation", why)``; an embedding whose length differs from the message's
    common length is replaced by none (``on_reject("embedding_size", ...)``). The rest of the frame
    goes on.
    """
    obs = []
    for o in msg.observations:
        why = observation_problem(o)
        if why is None:
            obs.append(o)
        elif on_reject is not None:
            on_reject("bad_observation", f"observation dropped: {why}")
    n = len(obs)
    T = np.stack([pose_to_matrix(o.pose) for o in obs]) if n else np.zeros((0, 4, 4))
    yaw = geometry.yaw_from_rotation_cam(torch.as_tensor(T[:, :3, :3])).numpy() if n else np.zeros(0)
    dims = {int(o.descriptor_dim) for o in obs}
    D = dims.pop() if len(dims) == 1 else 0
    S = len(obs[0].sample_uv) // 2 if n else 0
    uniform = n and D > 0 and all(len(o.sample_uv) == 2 * S and len(o.descriptors) == S * D for o in obs)
    E, has_emb = common_length([o.embedding for o in obs])
    if on_reject is not None:
        for o, ok in zip(obs, has_emb):
            if not ok and len(o.embedding):
                on_reject("embedding_size", f"embedding of length {len(o.embedding)} ignored (common length {E}, "
                          f"at most {MAX_EMBEDDING_DIM})")
    return FrameObservations(
        stamp_ns=int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec),
        K=np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
        image_wh=(int(msg.image_width), int(msg.image_height)),
        labels=[o.class_label for o in obs],
        scores=np.array([o.score for o in obs], dtype=np.float32),
        box_2d=np.array([list(o.box_2d) for o in obs], dtype=np.float32).reshape(n, 4),
        center_cam=T[:, :3, 3].copy(),
        yaw=yaw,
        size_lwh=np.array([[o.size.x, o.size.y, o.size.z] for o in obs], dtype=np.float64).reshape(n, 3),
        depth_std=np.array([o.depth_std for o in obs], dtype=np.float32),
        lateral_std=np.array([o.lateral_std for o in obs], dtype=np.float32),
        yaw_std=np.array([o.yaw_std for o in obs], dtype=np.float32),
        embedding=np.array([list(o.embedding) if ok else [0.0] * E for o, ok in zip(obs, has_emb)],
                           dtype=np.float32).reshape(n, E),
        sample_uv=np.array([list(o.sample_uv) for o in obs], dtype=np.float32).reshape(n, S, 2) if uniform
        else np.zeros((n, 0, 2), np.float32),
        descriptors=np.array([list(o.descriptors) for o in obs], dtype=np.float32).reshape(n, S, D) if uniform
        else np.zeros((n, 0, max(D, 0)), np.float32),
    )
