"""Render a synthetic sequence frame by frame with exact per-frame ground truth."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ba_perception.core.geometry import R_BODY_OPTICAL, yaw_from_rotation_cam
from ba_perception.data.world import meshes as M
from ba_perception.data.world.config import WorldConfig
from ba_perception.data.world.render import Draw, Renderer
from ba_perception.data.world.scene import Agent, Scene, cyclist_parts, generate, pedestrian_parts

CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist")
# Car levels of detail: vertex-clustering cell (metres) per LOD, and the projected box height
# (pixels) above which the finer level is used.
LOD_CELLS_M = {"@lod1": 0.2, "@lod2": 0.5}
LOD_MIN_PX = (40.0, 16.0)


class WorldError(RuntimeError):
    """Raised when a sequence cannot be rendered (bad frame pair, unknown track)."""


@dataclass
class GroundTruth:
    """Exact ground truth of the N objects of one frame (arrays share the row order).

    Attributes:
        track_id: ``(N,)`` int64, > 0, constant over the sequence (= instance id).
        class_label: N strings in :data:`CLASSES`.
        size_lwh: ``(N, 3)`` (length, width, height), metres.
        T_cam_obj: ``(N, 4, 4)`` box pose in the camera optical frame (object frame x fwd, y left, z up).
        center_cam: ``(N, 3)`` box centre, camera optical frame, metres.
        rotation_y: ``(N,)`` KITTI yaw in the camera frame, rad (``core.geometry`` convention).
        T_odom_obj: ``(N, 4, 4)`` box pose in odom.
        center_odom: ``(N, 3)`` metres.  yaw_odom: ``(N,)`` rad about odom +z.
        velocity_odom: ``(N, 3)`` box-centre velocity in odom, m/s.
        box_amodal: ``(N, 4)`` projected 3D box (8 corners), clipped to the image, pixels (x1, y1, x2, y2).
        box_full: ``(N, 4)`` bounding box of the object's complete (unoccluded) silhouette inside the
            image, pixel centres; NaN when it covers no pixel centre.
        box_visible: ``(N, 4)`` bounding box of its visible instance pixels; NaN when none.
        truncation: ``(N,)`` fraction of the projected 3D box area outside the image, [0, 1].
        occlusion: ``(N,)`` 1 - visible_pixels / full_pixels (fraction of the in-image silhouette
            hidden by anything nearer), [0, 1]; 1 when no silhouette pixel is in the image.
        visible_pixels, full_pixels: ``(N,)`` int64 pixel counts.
    """

    track_id: np.ndarray
    class_label: list[str]
    size_lwh: np.ndarray
    T_cam_obj: np.ndarray
    center_cam: np.ndarray
    rotation_y: np.ndarray
    T_odom_obj: np.ndarray
    center_odom: np.ndarray
    yaw_odom: np.ndarray
    velocity_odom: np.ndarray
    box_amodal: np.ndarray
    box_full: np.ndarray
    box_visible: np.ndarray
    truncation: np.ndarray
    occlusion: np.ndarray
    visible_pixels: np.ndarray
    full_pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.track_id)

    def index_of(self, track_id: int) -> int:
        """Row of ``track_id``; raises :class:`WorldError` when absent."""
        hits = np.nonzero(self.track_id == track_id)[0]
        if len(hits) == 0:
            raise WorldError(f"track {track_id} not in this frame's ground truth")
        return int(hits[0])

    @staticmethod
    def empty() -> GroundTruth:
        """Ground truth of a frame without objects."""
        z = np.zeros
        return GroundTruth(z(0, np.int64), [], z((0, 3)), z((0, 4, 4)), z((0, 3)), z(0), z((0, 4, 4)), z((0, 3)),
                           z(0), z((0, 3)), z((0, 4)), z((0, 4)), z((0, 4)), z(0), z(0), z(0, np.int64), z(0, np.int64))


@dataclass
class WorldFrame:
    """One rendered frame with its ground truth.

    Attributes:
        index: frame number in the sequence.  stamp_ns: capture stamp, nanoseconds.
        image: ``(H, W, 3)`` uint8 RGB.  K: 3x3 intrinsics (float64).
        T_odom_base, T_odom_cam, T_base_cam: 4x4 poses (camera = optical frame).
        depth: ``(H, W)`` float32 camera-frame z in metres, inf where only sky.
        instance: ``(H, W)`` int32, 0 = background else the object's track id.
        objects: :class:`GroundTruth` of the objects in view (within the GT range).
        surface_points: track id -> ``(P, 3)`` object-frame surface points (rigid parts) used
            by :func:`correspondences`; shared between frames, do not modify.
        velocity_base: ``(3,)`` ego linear velocity in base_link, m/s.
        yaw_rate: ego angular velocity about base_link +z, rad/s.
    """

    index: int
    stamp_ns: int
    image: np.ndarray
    K: np.ndarray
    T_odom_base: np.ndarray
    T_odom_cam: np.ndarray
    T_base_cam: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    objects: GroundTruth
    surface_points: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    velocity_base: np.ndarray = field(default_factory=lambda: np.zeros(3))
    yaw_rate: float = 0.0


def mounting_rotation(pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation of the camera body in base_link from mounting pitch and roll.

    Rotation ``(3, 3)`` of the camera body (x fwd, y left, z up) in base_link: ``R = R_y(pitch) @ R_x(roll)``,
    the REP-103 roll / pitch of ``camera_extrinsics`` (positive pitch looks down, positive roll lowers the right side).
    """
    p, r = math.radians(pitch_deg), math.radians(roll_deg)
    Ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    return Ry @ Rx


def base_to_camera(cfg: WorldConfig) -> np.ndarray:
    """``T_base_cam``: the camera optical frame on the ego (forward offset, height, pitch, roll), float64."""
    T = np.eye(4)
    T[:3, :3] = mounting_rotation(cfg.pitch_deg, cfg.roll_deg) @ R_BODY_OPTICAL.numpy()
    T[:3, 3] = [cfg.camera_forward_m, 0.0, cfg.camera_height_m]
    return T


def _inv(T: np.ndarray) -> np.ndarray:
    R, t = T[..., :3, :3], T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1
    return out


class World:
    """A generated scene bound to a renderer; renders frames of ``cfg`` in any order.

    Args:
        cfg: the world configuration.
        scene: optionally a pre-built (e.g. hand-constructed) scene for ``cfg``.

    Raises:
        WorldConfigError, MeshError, RenderError: bad configuration / missing meshes / no GL.
    """

    def __init__(self, cfg: WorldConfig, scene: Scene | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.scene = scene if scene is not None else generate(cfg)
        self.K = cfg.intrinsics()
        self.T_base_cam = base_to_camera(cfg)
        self.renderer = Renderer(cfg.width, cfg.height, self.K)
        self.renderer.add_mesh("scenery", self.scene.scenery)
        self._cull = True  # tests turn the field-of-view cull off to check it never drops a visible agent
        self._unit_box = M.box_mesh((1.0, 1.0, 1.0), color=(1.0, 1.0, 1.0))
        self.renderer.add_mesh("unit_box", self._unit_box)
        self.surface: dict[int, np.ndarray] = {}
        for a in self.scene.agents:
            if a.model not in ("pedestrian", "cyclist", "box") and not self.renderer.has_mesh(a.model):
                mesh = M.load_car(a.model)
                self.renderer.add_mesh(a.model, mesh)
                for suffix, cell in LOD_CELLS_M.items():
                    self.renderer.add_mesh(a.model + suffix, M.load_car_lod(a.model, cell))
            self.surface[a.track_id] = self._surface_points(a)

    def close(self) -> None:
        """Release the renderer."""
        self.renderer.release()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- geometry of one agent ---------------------------------------------------------------

    def _parts(self, a: Agent, phase: float) -> list:
        if a.model == "pedestrian":
            return pedestrian_parts(a.size, a.color, phase)
        return cyclist_parts(a.size, a.color, phase)

    def _surface_points(self, a: Agent) -> np.ndarray:
        n = self.cfg.surface_points
        seed = [self.cfg.seed, a.track_id]
        if a.model == "box":
            return M.sample_surface(M.box_mesh(a.size), n, seed)
        if a.model in ("pedestrian", "cyclist"):
            rigid = [M.transformed(M.box_mesh(s), T) for T, s, _, r in self._parts(a, 0.0) if r]
            return M.sample_surface(M.merge(rigid), n, seed)
        return M.sample_surface(M.load_car(a.model), n, seed) * a.scale

    def _draws(self, a: Agent, T_cam_obj: np.ndarray, t: float) -> list[Draw]:
        if a.model == "box":
            return [Draw("unit_box", T_cam_obj @ np.diag([*a.size, 1.0]), a.track_id, tuple(a.color))]
        if a.model in ("pedestrian", "cyclist"):
            return [
                Draw("unit_box", T_cam_obj @ T @ np.diag([*s, 1.0]), a.track_id, tuple(c))
                for T, s, c, _ in self._parts(a, self.scene.phase(a, t))
            ]
        # Level of detail by projected height: full mesh from LOD_MIN_PX[0] px up.
        h_px = self.K[1, 1] * a.size[2] / max(float(T_cam_obj[2, 3]), 1e-3)
        key = a.model if h_px >= LOD_MIN_PX[0] else (a.model + "@lod1" if h_px >= LOD_MIN_PX[1] else a.model + "@lod2")
        return [Draw(key, T_cam_obj @ np.diag([*a.scale, 1.0]), a.track_id, paint=tuple(a.color))]

    def _centres(self, t: float) -> np.ndarray:
        """``(N, 2)`` odom x, y of every agent's reference point at time ``t`` (vectorised)."""
        sc = self.scene
        if not hasattr(self, "_S"):
            ag = sc.agents
            self._S = np.stack([a.s_t for a in ag]) if ag else np.zeros((0, len(sc.t_grid)))
            self._lat = {k: np.array([getattr(a, k) for a in ag], np.float64)
                         for k in ("d0", "d1", "t_change", "change_s", "dist_change", "change_len")}
            self._radius = np.array([float(np.linalg.norm(a.size)) / 2 + 1.0 for a in ag])
        g = sc.t_grid
        i = int(np.clip(np.searchsorted(g, t) - 1, 0, len(g) - 2))
        w = (t - g[i]) / (g[i + 1] - g[i])
        s = self._S[:, i] * (1 - w) + self._S[:, i + 1] * w
        L = self._lat
        by_dist = L["change_len"] > 0
        u_d = (np.abs(s - self._S[:, 0]) - L["dist_change"]) / np.maximum(L["change_len"], 1e-9)
        u_t = (t - L["t_change"]) / L["change_s"]
        u = np.clip(np.where(by_dist, u_d, u_t), 0.0, 1.0)
        d = L["d0"] + (L["d1"] - L["d0"]) * u * u * (3 - 2 * u)
        x, y, _ = sc.road.pose(s, d)
        return np.stack([x, y], 1)

    def _prim_parts(self, a: Agent, T_cam_obj: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Unit-box transforms ``(P, 4, 4)`` (camera frame, scale included) and colours ``(P, 3)``."""
        if a.model == "box":
            return (T_cam_obj @ np.diag([*a.size, 1.0]))[None], np.asarray(a.color, np.float64)[None]
        parts = self._parts(a, self.scene.phase(a, t))
        Ms = np.stack([T_cam_obj @ T @ np.diag([*s, 1.0]) for T, s, _, _ in parts])
        return Ms, np.stack([c for _, _, c, _ in parts])

    def _upload_batch(self, prims: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[int, Draw]:
        """Upload all primitive parts as one camera-frame batch; returns one range Draw per id."""
        if not prims:
            self.renderer.set_batch(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
            return {}
        Ms = np.concatenate([m for _, m, _ in prims])
        cols = np.concatenate([c for _, _, c in prims])
        ids = np.concatenate([np.full(len(m), tid) for tid, m, _ in prims])
        U, N = self._unit_box.positions.astype(np.float64), self._unit_box.normals.astype(np.float64)
        R = Ms[:, :3, :3]
        pos = np.einsum("qij,vj->qvi", R, U) + Ms[:, None, :3, 3]
        nrm = np.einsum("qji,vj->qvi", np.linalg.inv(R), N)  # inverse transpose for scaled boxes
        nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
        nv = len(U)
        self.renderer.set_batch(pos.reshape(-1, 3), nrm.reshape(-1, 3), np.repeat(cols, nv, axis=0),
                                np.repeat(ids, nv).astype(np.float64))
        out, first = {}, 0
        for tid, m, _ in prims:
            out[tid] = Draw("batch", np.eye(4), tid, first=first, count=len(m) * nv)
            first += len(m) * nv
        return out

    # -- frames ------------------------------------------------------------------------------

    def pose_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """``(T_odom_base, T_odom_cam)`` at time ``t`` seconds."""
        T_odom_base = self.scene.ego_pose_odom(t)
        return T_odom_base, T_odom_base @ self.T_base_cam

    def render(self, index: int) -> WorldFrame:
        """Render frame ``index`` with all ground truth."""
        cfg, sc, W, H = self.cfg, self.scene, self.cfg.width, self.cfg.height
        t = index / cfg.rate_hz
        T_odom_base, T_odom_cam = self.pose_at(t)
        T_cam_odom = _inv(T_odom_cam)
        cam_pos = T_odom_cam[:3, 3]
        draws: list[Draw] = []  # agents first, then scenery: nearer first for early depth rejection
        near = self.renderer.near
        cand = []  # (agent, T_cam_obj, T_odom_obj, unclipped box, clipped box, full rect)
        prims: list[tuple[int, np.ndarray, np.ndarray]] = []
        # Cheap vectorised cull first: agent centres (on the road) in the camera frame must be
        # within 300 m, not far behind, and within a widened field of view.
        xy = self._centres(t)
        rel = np.c_[xy - cam_pos[:2], np.full(len(xy), -cam_pos[2])] @ T_cam_odom[:3, :3].T
        r = self._radius
        half_fov = max(abs(-self.K[0, 2]), abs(W - 1 - self.K[0, 2])) / self.K[0, 0]
        keep = np.einsum("ij,ij->i", rel, rel) < 300.0**2
        if self._cull:
            keep &= (rel[:, 2] > -r) & (np.abs(rel[:, 0]) < half_fov * np.maximum(rel[:, 2], 0) + r)
        for k in np.nonzero(keep)[0]:
            a = sc.agents[k]
            T_odom_obj = sc.agent_pose_odom(a, t)
            T_cam_obj = T_cam_odom @ T_odom_obj
            corners = local_box_corners(a.size) @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
            if (corners[:, 2] <= near).all():
                continue
            behind = (corners[:, 2] <= near).any()
            z = np.maximum(corners[:, 2], near)
            u = self.K[0, 0] * corners[:, 0] / z + self.K[0, 2]
            v = self.K[1, 1] * corners[:, 1] / z + self.K[1, 2]
            box = np.array([u.min(), v.min(), u.max(), v.max()])
            clipped = np.array([max(box[0], 0), max(box[1], 0), min(box[2], W - 1), min(box[3], H - 1)])
            if clipped[2] < clipped[0] or clipped[3] < clipped[1]:
                continue
            if a.model in ("pedestrian", "cyclist", "box"):
                prims.append((a.track_id, *self._prim_parts(a, T_cam_obj, t)))
            else:
                draws.extend(self._draws(a, T_cam_obj, t))
            if np.linalg.norm(T_cam_obj[:3, 3]) <= cfg.gt_max_range_m:
                if behind:
                    rect = (0, 0, W, H)
                else:
                    rect = (max(int(math.floor(box[0])) - 2, 0), max(int(math.floor(box[1])) - 2, 0),
                            min(int(math.ceil(box[2])) + 3, W), min(int(math.ceil(box[3])) + 3, H))
                cand.append((a, T_cam_obj, T_odom_obj, box, clipped, rect))
        batch = self._upload_batch(prims)
        if batch:
            draws.append(Draw("batch", np.eye(4), -1))
        draws.append(Draw("scenery", T_cam_odom))
        light_cam = T_cam_odom[:3, :3] @ sc.light_dir
        image, depth, inst = self.renderer.render(draws, light_cam, sc.ambient, sc.sky_top, sc.sky_horizon,
                                                  fog_color=sc.sky_horizon)
        image = self._postprocess(image, index)
        gt = self._ground_truth(cand, inst, t, batch)
        Ta, Tb = sc.ego_pose_odom(t - 0.005), sc.ego_pose_odom(t + 0.005)
        vel_base = T_odom_base[:3, :3].T @ ((Tb[:3, 3] - Ta[:3, 3]) / 0.01)
        dyaw = math.atan2(Tb[1, 0], Tb[0, 0]) - math.atan2(Ta[1, 0], Ta[0, 0])
        yaw_rate = math.remainder(dyaw, 2 * math.pi) / 0.01
        return WorldFrame(index, cfg.stamp_ns(index), image, self.K.copy(), T_odom_base, T_odom_cam,
                          self.T_base_cam.copy(), depth.copy(), inst.copy(), gt, self.surface, vel_base, yaw_rate)

    def _ground_truth(self, cand: list, inst: np.ndarray, t: float, batch: dict[int, Draw]) -> GroundTruth:
        if not cand:
            return GroundTruth.empty()
        W, H = self.cfg.width, self.cfg.height
        groups = [[batch[a.track_id]] if a.track_id in batch else self._draws(a, T, t) for a, T, *_ in cand]
        rects = [c[5] for c in cand]
        masks = self.renderer.silhouettes(groups, rects)
        n = len(cand)
        box_full = np.full((n, 4), np.nan)
        box_vis = np.full((n, 4), np.nan)
        full_px = np.zeros(n, np.int64)
        vis_px = np.zeros(n, np.int64)
        for i, ((a, *_), mask, (x0, y0, x1, y1)) in enumerate(zip(cand, masks, rects)):
            full_px[i] = int(mask.sum())
            if full_px[i]:
                rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
                box_full[i] = [x0 + cols[0], y0 + rows[0], x0 + cols[-1], y0 + rows[-1]]
            vis = inst[y0:y1, x0:x1] == a.track_id
            vis_px[i] = int(vis.sum())
            if vis_px[i]:
                rows, cols = np.nonzero(vis.any(1))[0], np.nonzero(vis.any(0))[0]
                box_vis[i] = [x0 + cols[0], y0 + rows[0], x0 + cols[-1], y0 + rows[-1]]
        T_cam = np.stack([c[1] for c in cand])
        T_odom = np.stack([c[2] for c in cand])
        box = np.stack([c[3] for c in cand])
        clipped = np.stack([c[4] for c in cand])
        # Areas over the continuous image extent [-0.5, W - 0.5] x [-0.5, H - 0.5].
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        cb = np.stack([np.maximum(box[:, 0], -0.5), np.maximum(box[:, 1], -0.5),
                       np.minimum(box[:, 2], W - 0.5), np.minimum(box[:, 3], H - 0.5)], 1)
        inside = np.clip(cb[:, 2] - cb[:, 0], 0, None) * np.clip(cb[:, 3] - cb[:, 1], 0, None)
        trunc = np.clip(1 - inside / np.maximum(area, 1e-9), 0, 1)
        occ = np.where(full_px > 0, 1 - vis_px / np.maximum(full_px, 1), 1.0)
        ry = yaw_from_rotation_cam(torch.from_numpy(T_cam[:, :3, :3])).numpy()
        yaw_odom = np.arctan2(T_odom[:, 1, 0], T_odom[:, 0, 0])
        vel = np.stack([self.scene.agent_velocity_odom(c[0], t) for c in cand])
        return GroundTruth(
            track_id=np.array([c[0].track_id for c in cand], np.int64),
            class_label=[c[0].cls for c in cand],
            size_lwh=np.stack([c[0].size for c in cand]).astype(np.float64),
            T_cam_obj=T_cam, center_cam=T_cam[:, :3, 3].copy(), rotation_y=ry,
            T_odom_obj=T_odom, center_odom=T_odom[:, :3, 3].copy(), yaw_odom=yaw_odom, velocity_odom=vel,
            box_amodal=clipped, box_full=box_full, box_visible=box_vis,
            truncation=trunc, occlusion=np.clip(occ, 0, 1), visible_pixels=vis_px, full_pixels=full_px,
        )

    def _postprocess(self, image: np.ndarray, index: int) -> np.ndarray:
        """Apply exposure / white balance / vignetting, box blur and Gaussian sensor noise.

        All optional; the OpenCV RNG is seeded per frame, so the result is deterministic.
        """
        cfg = self.cfg
        if cfg.exposure != 1.0 or tuple(cfg.white_balance) != (1.0, 1.0, 1.0) or cfg.vignetting > 0:
            if not hasattr(self, "_gain"):
                H, W = cfg.height, cfg.width
                yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
                r2 = ((xx - (W - 1) / 2) ** 2 + (yy - (H - 1) / 2) ** 2) / (((W - 1) / 2) ** 2 + ((H - 1) / 2) ** 2)
                vig = 1.0 - np.float32(cfg.vignetting) * r2
                self._gain = (vig[..., None] * np.float32(cfg.exposure) * np.asarray(cfg.white_balance, np.float32))
            image = np.clip(image.astype(np.float32) * self._gain + 0.5, 0, 255).astype(np.uint8)
        if cfg.blur_px <= 0 and cfg.noise_std <= 0:
            return image.copy()
        import cv2

        img = image
        if cfg.blur_px > 0:
            k = 2 * int(cfg.blur_px) + 1
            img = cv2.blur(img, (k, k))
        if cfg.noise_std > 0:
            cv2.setRNGSeed(int(np.random.default_rng([cfg.seed, index, 7]).integers(2**31 - 1)))
            noise = np.empty(img.shape, np.int16)
            cv2.randn(noise, 0.0, float(cfg.noise_std))  # type: ignore[call-overload]  # stub: arrays only; scalars apply to every channel
            img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        return img if img is not image else image.copy()


def local_box_corners(size: np.ndarray) -> np.ndarray:
    """Eight corners ``(8, 3)`` of a box of ``size`` centred at the origin (core.geometry order)."""
    signs = np.array([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                      [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], np.float64)
    return 0.5 * signs * np.asarray(size, np.float64)


def render_sequence(cfg: WorldConfig, start: int = 0, stop: int | None = None) -> Iterator[WorldFrame]:
    """Render frames ``start .. stop-1`` (default: all ``cfg.n_frames``) of the world ``cfg``.

    Deterministic: the same ``cfg`` gives bit-identical images, depth, ids and GT.

    Raises:
        WorldConfigError: invalid configuration.  MeshError: car meshes missing.
        RenderError: no EGL/OpenGL context.
    """
    with World(cfg) as world:
        for i in range(start, cfg.n_frames if stop is None else stop):
            yield world.render(i)


def _surface_visibility(frame: WorldFrame, track_id: int, depth_tol_m: float, depth_tol_rel: float) -> tuple[np.ndarray, np.ndarray]:
    """Visibility ``(P,)`` and pixels ``(P, 2)`` of every surface point of one object in one frame."""
    pts = frame.surface_points.get(track_id)
    if pts is None:
        raise WorldError(f"track {track_id} has no surface points")
    T = frame.objects.T_cam_obj[frame.objects.index_of(track_id)]
    p = pts @ T[:3, :3].T + T[:3, 3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = p[:, :2] / z[:, None] * np.array([frame.K[0, 0], frame.K[1, 1]]) + frame.K[:2, 2]
    H, W = frame.depth.shape
    ui = np.nan_to_num(np.round(uv[:, 0]), nan=-1, posinf=-1, neginf=-1).astype(np.int64)
    vi = np.nan_to_num(np.round(uv[:, 1]), nan=-1, posinf=-1, neginf=-1).astype(np.int64)
    inside = (z > 0.1) & (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)
    uc, vc = np.clip(ui, 0, W - 1), np.clip(vi, 0, H - 1)
    vis = inside & (frame.instance[vc, uc] == track_id) & (np.abs(frame.depth[vc, uc] - z) <= depth_tol_m + depth_tol_rel * z)
    return vis, uv


def visible_surface_points(frame: WorldFrame, track_id: int, depth_tol_m: float = 0.05,
                           depth_tol_rel: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(M,)`` into ``frame.surface_points[track_id]`` of the points visible in ``frame``, and their pixels ``(M, 2)``.

    Visibility as in :func:`correspondences`; indices are increasing, so the same points come
    first in every frame where they are visible.
    """
    vis, uv = _surface_visibility(frame, track_id, depth_tol_m, depth_tol_rel)
    idx = np.nonzero(vis)[0]
    return idx, uv[idx]


def correspondences(frame_a: WorldFrame, frame_b: WorldFrame, track_id: int,
                    depth_tol_m: float = 0.05, depth_tol_rel: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT 2D correspondences of one object's surface points visible in both frames.

    A surface point (kept in the object frame) is visible in a frame when it projects inside the
    image onto a pixel of this object's instance id whose rendered depth is within
    ``depth_tol_m + depth_tol_rel * z`` of the point's camera z. Rigid parts only (pedestrian
    limbs and cyclists' legs are excluded).

    Args:
        frame_a, frame_b: two frames of the same sequence.
        track_id: the object.

    Returns:
        ``points_obj (M, 3)`` object frame (metres), ``uv_a (M, 2)`` and ``uv_b (M, 2)`` pixel
        coordinates (float64, pixel centres at integers).

    Raises:
        WorldError: the object is not in both frames' ground truth.
    """
    vis_a, uv_a = _surface_visibility(frame_a, track_id, depth_tol_m, depth_tol_rel)
    vis_b, uv_b = _surface_visibility(frame_b, track_id, depth_tol_m, depth_tol_rel)
    ok = vis_a & vis_b
    return frame_a.surface_points[track_id][ok], uv_a[ok], uv_b[ok]
