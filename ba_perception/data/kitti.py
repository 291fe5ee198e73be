"""KITTI tracking format (image_02/, label_02/, calib/, oxts/) export and import.

Layout under ``root``: ``image_02/SEQ/NNNNNN.png``, ``label_02/SEQ.txt``, ``calib/SEQ.txt``,
``oxts/SEQ.txt`` with ``SEQ`` a 4-digit sequence name. Conventions of the KITTI tracking devkit:

- label line: ``frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y``,
  location = *bottom* centre of the 3D box in the rectified reference camera (cam 0), ``type`` in
  ``Car, Pedestrian, Cyclist, Van, ...``; ``truncated`` is a level 0/1/2 and ``occluded`` 0/1/2/3.
- calib: ``P0..P3`` (3x4), ``R_rect`` (3x3), ``Tr_velo_cam`` and ``Tr_imu_velo`` (3x4).
- oxts: 30 values per frame (lat, lon, alt, roll, pitch, yaw, vn, ve, vf, vl, vu, ax, ..., wu, ...);
  poses by the devkit's Mercator projection, relative to the first frame.

Export writes our camera as cam 2 with ``P2 = [K | 0]`` (so the reference camera is the image
camera), ``R_rect = I``, ``Tr_velo_cam = T_cam_base`` and ``Tr_imu_velo = I`` (IMU = base_link).
Levels: truncated 0 if < 0.15, 1 if < 0.5, else 2; occluded 0 if < 0.1, 1 if < 0.5, else 2.
The 2D box is the object's complete-silhouette box (``box_full``); objects with no silhouette pixel
in the image are not exported.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import torch

from ba_perception.core.geometry import observation_angle, rotation_cam_from_yaw

if TYPE_CHECKING:
    from ba_perception.data.bag import BagFrame
    from ba_perception.data.world.sequence import GroundTruth, WorldFrame

EARTH_RADIUS_M = 6378137.0
REF_LAT_DEG, REF_LON_DEG = 49.011, 8.4165  # Karlsruhe, where KITTI was recorded
TYPE_OF_CLASS = {"car": "Car", "pedestrian": "Pedestrian", "cyclist": "Cyclist"}


class KittiError(RuntimeError):
    """Raised for a missing or malformed KITTI tracking file."""


def truncation_level(t: float) -> int:
    """KITTI tracking truncation level (0, 1, 2) of a truncated fraction in [0, 1]."""
    return 0 if t < 0.15 else (1 if t < 0.5 else 2)


def occlusion_level(o: float) -> int:
    """KITTI occlusion level (0 fully visible, 1 partly, 2 largely) of an occluded fraction."""
    return 0 if o < 0.1 else (1 if o < 0.5 else 2)


def _seq_name(seq: int | str) -> str:
    return f"{int(seq):04d}" if str(seq).isdigit() else str(seq)


def _mercator(lat_deg: np.ndarray, lon_deg: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    mx = scale * np.radians(lon_deg) * EARTH_RADIUS_M
    my = scale * EARTH_RADIUS_M * np.log(np.tan(np.radians(90.0 + lat_deg) / 2))
    return mx, my


def _inv_mercator(mx: np.ndarray, my: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    lon = np.degrees(mx / (scale * EARTH_RADIUS_M))
    lat = np.degrees(2 * np.arctan(np.exp(my / (scale * EARTH_RADIUS_M)))) - 90.0
    return lat, lon


def _rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def _fmt(values) -> str:
    return " ".join(f"{float(v):.12e}" for v in np.ravel(values))


class KittiWriter:
    """Streams frames of one sequence into KITTI tracking files.

    Usage::

        with KittiWriter("data/kitti", seq=0) as kw:
            for frame in render_sequence(cfg):
                kw.write(frame)

    Args:
        root: dataset root (``training/`` style folder holding image_02, label_02, calib, oxts).
        seq: sequence number or name.
        write_images: write ``image_02/SEQ/NNNNNN.png``.

    Raises:
        KittiError: the output cannot be created.
    """

    def __init__(self, root: str | Path, seq: int | str, write_images: bool = True) -> None:
        self.root, self.seq = Path(root), _seq_name(seq)
        self.write_images = write_images
        self._n = 0
        self._origin: np.ndarray | None = None
        self._files: dict[str, TextIO] = {}

    def __enter__(self) -> KittiWriter:
        try:
            for sub in ("label_02", "calib", "oxts"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if self.write_images:
                (self.root / "image_02" / self.seq).mkdir(parents=True, exist_ok=True)
            self._files["label"] = open(self.root / "label_02" / f"{self.seq}.txt", "w")
            self._files["oxts"] = open(self.root / "oxts" / f"{self.seq}.txt", "w")
        except OSError as err:
            raise KittiError(f"cannot write KITTI files under {self.root}: {err}") from err
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()

    def write(self, frame: WorldFrame | BagFrame) -> None:
        """Append one frame (image, labels, oxts; calib with the first frame)."""
        i = self._n
        if i == 0:
            P = np.zeros((3, 4))
            P[:, :3] = frame.K
            T_cam_base = np.linalg.inv(frame.T_base_cam)
            lines = [f"P{k}: {_fmt(P)}" for k in range(4)]
            lines += [f"R_rect {_fmt(np.eye(3))}", f"Tr_velo_cam {_fmt(T_cam_base[:3])}", f"Tr_imu_velo {_fmt(np.eye(4)[:3])}"]
            (self.root / "calib" / f"{self.seq}.txt").write_text("\n".join(lines) + "\n")
            self._origin = frame.T_odom_base[:3, 3].copy()
        if self.write_images:
            import cv2

            if frame.image is None:
                raise KittiError(f"frame {frame.index} has no image to export")
            path = self.root / "image_02" / self.seq / f"{i:06d}.png"
            if not cv2.imwrite(str(path), np.ascontiguousarray(frame.image[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise KittiError(f"cannot write {path}")
        self._files["label"].write(label_lines(i, frame.objects))
        # oxts: Mercator relative to the first frame at the reference latitude (scale of frame 0).
        T = frame.T_odom_base
        scale = math.cos(math.radians(REF_LAT_DEG))
        mx0, my0 = _mercator(np.array(REF_LAT_DEG), np.array(REF_LON_DEG), scale)
        d = T[:3, 3] - self._origin
        lat, lon = _inv_mercator(mx0 + d[0], my0 + d[1], scale)
        R = T[:3, :3]
        yaw = math.atan2(R[1, 0], R[0, 0])
        pitch = math.asin(-max(-1.0, min(1.0, R[2, 0])))
        roll = math.atan2(R[2, 1], R[2, 2])
        v = frame.velocity_base
        vals = [lat, lon, T[2, 3], roll, pitch, yaw, 0, 0, v[0], v[1], v[2], 0, 0, 0, 0, 0, 0,
                0, 0, frame.yaw_rate, 0, 0, frame.yaw_rate, 0.01, 0.01, 4, 10, 5, 5, 5]
        self._files["oxts"].write(" ".join([repr(float(x)) for x in vals[:25]] + [str(int(x)) for x in vals[25:]]) + "\n")
        self._n += 1


def label_lines(frame_index: int, g: GroundTruth) -> str:
    """KITTI tracking label lines of one frame's ground truth (camera = reference camera)."""
    out = []
    if len(g) == 0:
        return ""
    alpha = observation_angle(torch.from_numpy(g.center_cam), torch.from_numpy(g.rotation_y)).numpy()
    for i in range(len(g)):
        if not np.isfinite(g.box_full[i]).all():
            continue
        l, w, h = g.size_lwh[i]
        bottom = g.center_cam[i] + np.array([0.0, h / 2, 0.0])  # object up = camera -y
        typ = TYPE_OF_CLASS.get(g.class_label[i], g.class_label[i].capitalize())
        x1, y1, x2, y2 = g.box_full[i]
        out.append(
            f"{frame_index} {int(g.track_id[i])} {typ} {truncation_level(g.truncation[i])} {occlusion_level(g.occlusion[i])} "
            f"{alpha[i]:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {h:.6f} {w:.6f} {l:.6f} "
            f"{bottom[0]:.6f} {bottom[1]:.6f} {bottom[2]:.6f} {g.rotation_y[i]:.6f}\n"
        )
    return "".join(out)


def _read_calib(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise KittiError(f"missing calibration {path}")
    out = {}
    for line in path.read_text().splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) > 1:
            try:
                out[parts[0]] = np.array([float(x) for x in parts[1:]])
            except ValueError as err:
                raise KittiError(f"{path}: malformed line {line!r}") from err
    for key in ("P2", "R_rect", "Tr_velo_cam", "Tr_imu_velo"):
        if key not in out:
            raise KittiError(f"{path} has no {key}")
    return out


def _clip(boxes: np.ndarray, size_wh: tuple[int, int] | None) -> np.ndarray:
    if size_wh is None:
        return boxes
    W, H = size_wh
    return np.stack([np.maximum(boxes[:, 0], 0), np.maximum(boxes[:, 1], 0),
                     np.minimum(boxes[:, 2], W - 1), np.minimum(boxes[:, 3], H - 1)], 1)


def _h(M34: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3] = M34.reshape(3, 4)
    return T


def read_label_rows(path: str | Path) -> dict[int, list[list[str]]]:
    """KITTI tracking label lines of a file as ``{frame: [fields, ...]}`` (DontCare and short lines skipped)."""
    labels: dict[int, list[list[str]]] = {}
    for ln in Path(path).read_text().splitlines():
        f = ln.split()
        if len(f) < 17 or f[2] == "DontCare":
            continue
        labels.setdefault(int(f[0]), []).append(f)
    return labels


def label_ground_truth(rows: list[list[str]], K: np.ndarray, t2: np.ndarray, T_odom_cam: np.ndarray,
                       size_wh: tuple[int, int] | None) -> GroundTruth:
    """GroundTruth of one frame's label rows (see :func:`read_kitti`); ``velocity_odom`` zero.

    Args:
        rows: label fields of the frame (:func:`read_label_rows`).  K: 3x3 intrinsics of the image camera.
        t2: ``(3,)`` image camera centre offset from the labels' reference camera (zeros if the same), m.
        T_odom_cam: 4x4 pose of the image camera (optical) in odom.  size_wh: clip ``box_amodal`` to it.
    """
    from ba_perception.data.world.sequence import GroundTruth, local_box_corners

    n = len(rows)
    if n == 0:
        return GroundTruth.empty()
    a = np.array([[float(x) for x in r[3:17]] for r in rows])  # trunc occ alpha x1 y1 x2 y2 h w l x y z ry
    h, w, l = a[:, 7], a[:, 8], a[:, 9]
    ry = a[:, 13]
    center_ref = a[:, 10:13] - np.stack([np.zeros(n), h / 2, np.zeros(n)], 1)
    center = center_ref + t2
    R = rotation_cam_from_yaw(torch.from_numpy(ry)).numpy()
    T_cam = np.tile(np.eye(4), (n, 1, 1))
    T_cam[:, :3, :3] = R
    T_cam[:, :3, 3] = center
    T_odom = T_odom_cam @ T_cam
    size = np.stack([l, w, h], 1)
    corners = np.stack([local_box_corners(size[i]) @ R[i].T + center[i] for i in range(n)])
    z = np.maximum(corners[..., 2], 0.1)
    u = K[0, 0] * corners[..., 0] / z + K[0, 2]
    v = K[1, 1] * corners[..., 1] / z + K[1, 2]
    return GroundTruth(
        track_id=np.array([int(r[1]) for r in rows], np.int64),
        class_label=[r[2].lower() for r in rows],
        size_lwh=size, T_cam_obj=T_cam, center_cam=center.copy(), rotation_y=ry,
        T_odom_obj=T_odom, center_odom=T_odom[:, :3, 3].copy(),
        yaw_odom=np.arctan2(T_odom[:, 1, 0], T_odom[:, 0, 0]), velocity_odom=np.zeros((n, 3)),
        box_amodal=_clip(np.stack([u.min(1), v.min(1), u.max(1), v.max(1)], 1), size_wh),
        box_full=a[:, 3:7].copy(), box_visible=np.full((n, 4), np.nan),
        truncation=a[:, 0].copy(), occlusion=a[:, 1].copy(),
        visible_pixels=np.full(n, -1, np.int64), full_pixels=np.full(n, -1, np.int64),
    )


def fill_track_velocities(gts: list[GroundTruth], dt: float) -> None:
    """Set ``velocity_odom`` in place: central differences of each track's odom centre (one-sided at the ends).

    Args:
        gts: consecutive frames' ground truth.  dt: frame period, seconds.
    """
    where: dict[int, dict[int, np.ndarray]] = {}
    for k, g in enumerate(gts):
        for i, tid in enumerate(g.track_id):
            where.setdefault(int(tid), {})[k] = g.center_odom[i]
    for k, g in enumerate(gts):
        for i, tid in enumerate(g.track_id):
            hist = where[int(tid)]
            prev, nxt = hist.get(k - 1), hist.get(k + 1)
            if prev is not None and nxt is not None:
                g.velocity_odom[i] = (nxt - prev) / (2 * dt)
            elif nxt is not None:
                g.velocity_odom[i] = (nxt - g.center_odom[i]) / dt
            elif prev is not None:
                g.velocity_odom[i] = (g.center_odom[i] - prev) / dt


def read_kitti(root: str | Path, seq: int | str, images: bool = True, rate_hz: float = 10.0,
               start_stamp_ns: int = 0) -> Iterator[BagFrame]:
    """Frames of a KITTI tracking sequence (ours or the real dataset), in order.

    Poses are relative to the first frame (``T_odom_base`` = identity at frame 0), as in the
    devkit. Labels in the reference camera are moved into camera 2 with P2's offset; box centres
    become geometric centres; ``velocity_odom`` is the central difference of each track's centre
    (0 for single-frame tracks). ``box_full`` = the label's 2D box, ``box_amodal`` = projected 3D box (clipped to the size of
    ``image_02/SEQ/000000.png`` when present),
    ``box_visible`` NaN; truncation/occlusion are the label *levels* as floats.
    DontCare lines are skipped.

    Raises:
        KittiError: missing or malformed files.
    """
    from ba_perception.data.bag import BagFrame

    root, name = Path(root), _seq_name(seq)
    calib = _read_calib(root / "calib" / f"{name}.txt")
    P2 = calib["P2"].reshape(3, 4)
    K = P2[:, :3].copy()
    t2 = np.linalg.solve(K, P2[:, 3])  # cam 2 centre offset from the reference camera
    R_rect = np.eye(4)
    R_rect[:3, :3] = calib["R_rect"].reshape(3, 3)
    T_cam2_ref = np.eye(4)
    T_cam2_ref[:3, 3] = t2
    T_cam_imu = T_cam2_ref @ R_rect @ _h(calib["Tr_velo_cam"]) @ _h(calib["Tr_imu_velo"])
    T_base_cam = np.linalg.inv(T_cam_imu)
    oxts_path = root / "oxts" / f"{name}.txt"
    if not oxts_path.is_file():
        raise KittiError(f"missing {oxts_path}")
    oxts = np.array([[float(x) for x in ln.split()[:6]] for ln in oxts_path.read_text().splitlines() if ln.strip()])
    if oxts.size == 0:
        raise KittiError(f"{oxts_path} is empty")
    full = [[float(x) for x in ln.split()] for ln in oxts_path.read_text().splitlines() if ln.strip()]
    scale = math.cos(math.radians(oxts[0, 0]))
    mx, my = _mercator(oxts[:, 0], oxts[:, 1], scale)
    poses = []
    for k in range(len(oxts)):
        T = np.eye(4)
        T[:3, :3] = _rpy_matrix(*oxts[k, 3:6])
        T[:3, 3] = [mx[k], my[k], oxts[k, 2]]
        poses.append(T)
    T0inv = np.linalg.inv(poses[0])
    poses = [T0inv @ T for T in poses]
    label_path = root / "label_02" / f"{name}.txt"
    labels = read_label_rows(label_path) if label_path.is_file() else {}
    first = root / "image_02" / name / "000000.png"
    size_wh = None
    if first.is_file():
        import cv2

        im0 = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
        if im0 is not None:
            size_wh = (im0.shape[1], im0.shape[0])
    gts = [label_ground_truth(labels.get(k, []), K, t2, poses[k] @ T_base_cam, size_wh) for k in range(len(poses))]
    fill_track_velocities(gts, 1.0 / rate_hz)
    for k in range(len(poses)):
        image = None
        if images:
            import cv2

            p = root / "image_02" / name / f"{k:06d}.png"
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise KittiError(f"missing or unreadable image {p}")
            image = np.ascontiguousarray(bgr[:, :, ::-1])
        vel = np.array(full[k][8:11]) if len(full[k]) >= 11 else np.zeros(3)
        wu = full[k][22] if len(full[k]) >= 23 else 0.0
        yield BagFrame(k, int(start_stamp_ns + round(k * 1e9 / rate_hz)), image, K, poses[k], poses[k] @ T_base_cam,
                       T_base_cam, vel, float(wu), gts[k])
