"""Detector results <-> ba_perception_msgs/ObjectObservationArray (camera optical frame)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.ros.convert import matrices_to_poses, pose_to_matrix


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


def msg_to_observations(msg: Any) -> FrameObservations:
    """ObjectObservationArray -> :class:`FrameObservations` (arrays, camera optical frame)."""
    obs = list(msg.observations)
    n = len(obs)
    T = np.stack([pose_to_matrix(o.pose) for o in obs]) if n else np.zeros((0, 4, 4))
    yaw = geometry.yaw_from_rotation_cam(torch.as_tensor(T[:, :3, :3])).numpy() if n else np.zeros(0)
    dims = {int(o.descriptor_dim) for o in obs}
    D = dims.pop() if len(dims) == 1 else 0
    S = len(obs[0].sample_uv) // 2 if n else 0
    uniform = n and D > 0 and all(len(o.sample_uv) == 2 * S and len(o.descriptors) == S * D for o in obs)
    E = len(obs[0].embedding) if n else 0
    emb_ok = n and all(len(o.embedding) == E for o in obs)
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
        embedding=np.array([list(o.embedding) for o in obs], dtype=np.float32).reshape(n, E) if emb_ok
        else np.zeros((n, 0), np.float32),
        sample_uv=np.array([list(o.sample_uv) for o in obs], dtype=np.float32).reshape(n, S, 2) if uniform
        else np.zeros((n, 0, 2), np.float32),
        descriptors=np.array([list(o.descriptors) for o in obs], dtype=np.float32).reshape(n, S, D) if uniform
        else np.zeros((n, 0, max(D, 0)), np.float32),
    )
