"""Synthetic driving world: procedural scenes rendered offscreen (moderngl/EGL) with exact ground truth.

Usage::

    from ba_perception.data.world import WorldConfig, render_sequence, correspondences

    cfg = WorldConfig(preset="urban", seed=3, width=1242, height=375, rate_hz=10, n_frames=50)
    for frame in render_sequence(cfg):          # Iterator[WorldFrame], rendered in memory
        frame.image        # (H, W, 3) uint8 RGB
        frame.K            # 3x3 intrinsics (KITTI camera 02 by default, scaled to the size)
        frame.T_odom_cam   # 4x4 camera *optical* frame in odom; T_odom_base, T_base_cam too
        frame.depth        # (H, W) float32 camera z, metres, inf for sky
        frame.instance     # (H, W) int32, 0 background, else the object's track id
        gt = frame.objects # GroundTruth: track_id, class_label ('car'|'pedestrian'|'cyclist'),
                           # size_lwh, T_cam_obj, center_cam, rotation_y (KITTI), T_odom_obj,
                           # center_odom, yaw_odom, velocity_odom, box_amodal (projected 3D box),
                           # box_full (complete silhouette), box_visible, truncation, occlusion
    pts_obj, uv_a, uv_b = correspondences(frame_a, frame_b, track_id)   # GT 2D-2D matches

Ground-truth definitions: ``box_amodal`` = the projected 8 corners of the 3D box clipped to the
image (the message's ``box_2d_amodal``); ``box_full`` = tight box of the object's complete
silhouette rendered alone (occluders removed); ``box_visible`` = tight box of its pixels in
``instance``; ``occlusion`` = 1 - visible / complete silhouette pixels; ``truncation`` = share of
the projected 3D box outside the image. Boxes use pixel centres at integer coordinates.
Distant cars are drawn with vertex-clustered LODs (GT always describes what was drawn).

``World(cfg)`` renders frames in any order (``world.render(i)``); ``scene.generate(cfg)`` gives
the scenario (road, ego, agents) without rendering. Presets: highway, urban, parking_lot,
occlusion_stress, residential (v3). Same config -> bit-identical output. Conventions are those of
``ba_perception.core.geometry`` (object frame x fwd / y left / z up, box centre = geometric centre).
``WorldConfig.world_version`` selects the generator: ``v3`` (default: stops per minute, camera
rigs with pitch/roll and per-sequence appearance from ``rigs.draw_rig``, trigger-rally and TORCS
cars at real sizes from a model pool) or ``v2`` (the previous world, bit-identical). Cars are
textured meshes (Debian ``trigger-rally-data``, ``torcs-data``) with random paint; pedestrians and
cyclists are articulated boxes. ``stats.split_stats`` measures ego travel and object ranges.
"""

from __future__ import annotations

from ba_perception.data.world.config import PRESETS, WorldConfig, WorldConfigError
from ba_perception.data.world.meshes import MeshError, check_meshes
from ba_perception.data.world.render import RenderError
from ba_perception.data.world.sequence import (
    CLASSES,
    GroundTruth,
    World,
    WorldError,
    WorldFrame,
    base_to_camera,
    correspondences,
    render_sequence,
    visible_surface_points,
)

__all__ = [
    "CLASSES", "PRESETS", "GroundTruth", "MeshError", "RenderError", "World", "WorldConfig",
    "WorldConfigError", "WorldError", "WorldFrame", "base_to_camera", "check_meshes",
    "correspondences", "render_sequence", "visible_surface_points",
]
