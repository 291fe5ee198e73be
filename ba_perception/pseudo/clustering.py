"""DoubleClustering: per frame the main cluster of points in each 2D box (local), merged per track over time (global).

Local: the points observed in one frame inside one object's 2D box, after ground removal, are
split along the camera depth where consecutive depths jump by more than a gap; the largest
segment is the object's main cluster in that frame (points seen through the box on the
background, or on an occluder, fall in other segments). Global: a point belongs to its track's
object when it was in the main cluster in at least half of the frames that saw it; the track's
object is the union of those points, cleaned by a bird's-eye-view distance test around their
median, and then (:func:`refine_with_boxes`) by its projections: a point must fall inside the
track's 2D box in nearly every labelled frame. All arrays in odom (metres) unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ba_perception.pseudo.reconstruct import PointCloud


@dataclass
class ClusterOptions:
    """Tuning of :func:`double_clustering`.

    Attributes:
        ground_min_m / max_height_m: kept heights above the ground plane, metres.
        gap_m: depth gap that splits a box's points, metres (grown by ``gap_rel`` x depth).
        main_share: share of a point's frames in which it must be in the main cluster.
        bev_radius_m: points farther than this from the track's BEV median are dropped.
        min_points: an object needs this many points.
        box_share: share of its track's labelled frames a point must project inside the 2D box in
            (:func:`refine_with_boxes`, applied by the pipeline).
    """

    ground_min_m: float = 0.2
    max_height_m: float = 3.5
    gap_m: float = 0.7
    gap_rel: float = 0.03
    main_share: float = 0.5
    bev_radius_m: float = 3.5
    min_points: int = 15
    box_share: float = 0.9


@dataclass
class ObjectCluster:
    """One track's merged points.

    Attributes:
        track_id: label track id.  points: ``(P, 3)`` odom, metres.  height: ``(P,)`` above ground, m.
        frame_centroids: ``(F_t, 3)`` odom centroid of the main cluster per frame; ``frames``: ``(F_t,)``.
        ground_z: ground height under the object in odom (z at its BEV median), metres.
        up: ``(3,)`` ground normal in odom.
    """

    track_id: int
    points: np.ndarray
    height: np.ndarray
    frame_centroids: np.ndarray
    frames: np.ndarray
    ground_z: float
    up: np.ndarray


def height_above_ground(xyz: np.ndarray, T_odom_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height of points above the ego's ground plane at the nearest ego pose (base_link plane z = 0).

    Args:
        xyz: ``(P, 3)`` odom points.  T_odom_base: ``(F, 4, 4)`` ego poses (base_link on the ground).

    Returns:
        ``(height (P,), nearest frame (P,))`` metres / index.
    """
    o = T_odom_base[:, :3, 3]
    n = T_odom_base[:, :3, 2]
    d = np.linalg.norm(xyz[:, None, :2] - o[None, :, :2], axis=2)
    k = np.argmin(d, 1)
    return ((xyz - o[k]) * n[k]).sum(1), k


def main_cluster_mask(group: np.ndarray, depth: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Per group, the members of the largest run of depths without a jump larger than ``gap``.

    Args:
        group: ``(M,)`` int group id (e.g. frame x track).  depth: ``(M,)`` metres.
        gap: ``(M,)`` allowed jump to the next deeper member, metres.

    Returns:
        ``(M,)`` bool, True for members of their group's main cluster.
    """
    if len(group) == 0:
        return np.zeros(0, bool)
    order = np.lexsort((depth, group))
    g, dep, gp = group[order], depth[order], gap[order]
    new = np.ones(len(g), bool)
    new[1:] = (g[1:] != g[:-1]) | (np.diff(dep) > gp[:-1])
    seg = np.cumsum(new) - 1
    size = np.bincount(seg)
    # largest segment per group (first on ties): argmax via sort by (group, -size)
    seg_group = g[new]
    seg_order = np.lexsort((-size, seg_group))
    first_of_group = np.ones(len(seg_order), bool)
    first_of_group[1:] = seg_group[seg_order][1:] != seg_group[seg_order][:-1]
    best = np.zeros(len(size), bool)
    best[seg_order[first_of_group]] = True
    out = np.zeros(len(group), bool)
    out[order] = best[seg]
    return out


def double_clustering(pc: PointCloud, T_odom_cam: np.ndarray, T_odom_base: np.ndarray,
                      opts: ClusterOptions | None = None) -> dict[int, ObjectCluster]:
    """Objects of a reconstruction: local main clusters per frame and box, merged per track.

    Args:
        pc: the reconstruction.  T_odom_cam: ``(F, 4, 4)`` camera poses.  T_odom_base: ``(F, 4, 4)``
            ego poses (ground plane).  opts: tuning.

    Returns:
        ``{track_id: ObjectCluster}`` for tracks with at least ``opts.min_points`` points.
    """
    opts = opts or ClusterOptions()
    if len(pc) == 0:
        return {}
    h, near = height_above_ground(pc.xyz, T_odom_base)
    above = (h > opts.ground_min_m) & (h < opts.max_height_m)
    o = above[pc.obs_point]
    pt, fr = pc.obs_point[o], pc.obs_frame[o]
    T_cam_odom = np.linalg.inv(T_odom_cam)
    depth = np.einsum("mj,mj->m", T_cam_odom[fr, 2, :3], pc.xyz[pt]) + T_cam_odom[fr, 2, 3]
    tid = pc.track_id[pt]
    _, tid_idx = np.unique(tid, return_inverse=True)
    group = fr * (tid_idx.max() + 1) + tid_idx
    main = main_cluster_mask(group, depth, opts.gap_m + opts.gap_rel * depth)
    n_obs = np.bincount(pt, minlength=len(pc))
    n_main = np.bincount(pt, weights=main, minlength=len(pc))
    keep = above & (n_obs > 0) & (n_main >= opts.main_share * np.maximum(n_obs, 1))
    out: dict[int, ObjectCluster] = {}
    for t in np.unique(pc.track_id[keep]):
        idx = np.nonzero(keep & (pc.track_id == t))[0]
        if len(idx) < opts.min_points:
            continue
        med = np.median(pc.xyz[idx, :2], 0)
        idx = idx[np.linalg.norm(pc.xyz[idx, :2] - med, axis=1) < opts.bev_radius_m]
        if len(idx) < opts.min_points:
            continue
        sel = main & (tid == t) & keep[pt]
        frames_t, inv = np.unique(fr[sel], return_inverse=True)
        cnt = np.bincount(inv)
        cent = np.stack([np.bincount(inv, weights=pc.xyz[pt[sel], k]) / cnt for k in range(3)], 1)
        k = int(np.bincount(near[idx]).argmax())
        base = T_odom_base[k]
        up = base[:3, 2]
        pm = np.array([*med, base[2, 3]])
        # ground z at the median: on the plane through the base origin with normal up
        gz = base[2, 3] - (up[0] * (pm[0] - base[0, 3]) + up[1] * (pm[1] - base[1, 3])) / max(up[2], 1e-6)
        out[int(t)] = ObjectCluster(int(t), pc.xyz[idx], h[idx], cent, frames_t, float(gz), up.copy())
    return out


def box_consistency(points: np.ndarray, boxes: np.ndarray, K: np.ndarray, T_cam_odom: np.ndarray,
                    image_wh: tuple[int, int], grow: float = 0.05) -> np.ndarray:
    """Share of a track's labelled frames in which each point projects inside the track's 2D box.

    Frames where the point falls outside the image (or behind the camera) do not count.

    Args:
        points: ``(P, 3)`` odom.  boxes: ``(F, 4)`` the track's 2D labels, pixels.  K: ``(F, 3, 3)``.
        T_cam_odom: ``(F, 4, 4)``.  image_wh: ``(W, H)``.  grow: boxes grown by this share of their size.

    Returns:
        ``(P,)`` share in ``[0, 1]`` (1 where no frame counts).
    """
    pc = np.einsum("fij,pj->fpi", T_cam_odom[:, :3, :3], points) + T_cam_odom[:, None, :3, 3]
    z = pc[..., 2]
    zc = np.maximum(z, 1e-3)
    u = K[:, None, 0, 0] * pc[..., 0] / zc + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pc[..., 1] / zc + K[:, None, 1, 2]
    W, H = image_wh
    counts = (z > 0.5) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    gw = grow * (boxes[:, 2] - boxes[:, 0])[:, None]
    gh = grow * (boxes[:, 3] - boxes[:, 1])[:, None]
    inside = ((u >= boxes[:, 0:1] - gw) & (u <= boxes[:, 2:3] + gw) & (v >= boxes[:, 1:2] - gh) & (v <= boxes[:, 3:4] + gh))
    n = counts.sum(0)
    return np.where(n > 0, (inside & counts).sum(0) / np.maximum(n, 1), 1.0)


def refine_with_boxes(cluster: ObjectCluster, boxes: np.ndarray, K: np.ndarray, T_cam_odom: np.ndarray,
                      image_wh: tuple[int, int], min_share: float = 0.9, min_points: int = 15) -> ObjectCluster | None:
    """The cluster without points that leave the track's 2D box in more than ``1 - min_share`` of its frames.

    A neighbour's or background point seen through the box in some frames projects outside it in
    others; the object's own points stay inside its (complete-silhouette) box in every frame.
    Returns None when fewer than ``min_points`` remain.
    """
    share = box_consistency(cluster.points, boxes, K, T_cam_odom, image_wh)
    keep = share >= min_share
    if keep.sum() < min_points:
        return None
    return ObjectCluster(cluster.track_id, cluster.points[keep], cluster.height[keep], cluster.frame_centroids,
                         cluster.frames, cluster.ground_z, cluster.up)
