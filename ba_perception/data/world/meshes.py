"""Triangle meshes for the synthetic world: trigger-rally car models and articulated primitives."""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TRIGGER_RALLY_ZIP = Path("/usr/share/games/trigger-rally/data.zip")
# Car bodies shipped by Debian trigger-rally-data (each with its own texture and wheel model).
CAR_MODELS: tuple[str, ...] = (
    "cordo_kitcar", "cordo_super500", "cordo_wrc",
    "evo_kitcar", "evo_super500", "evo_wrc",
    "fox_kitcar", "fox_super500", "fox_wrc",
)
MESH_FIX = "install the car meshes with `sudo apt-get install trigger-rally-data` (or `bash scripts/setup.sh`)"


class MeshError(RuntimeError):
    """Raised when a mesh package is missing or a model cannot be parsed."""


@dataclass(frozen=True)
class Mesh:
    """An indexed-free triangle soup in an object frame (x forward, y left, z up), metres.

    Attributes:
        positions: ``(T*3, 3)`` float32 vertex positions, three per triangle.
        normals: ``(T*3, 3)`` float32 unit normals.
        uvs: ``(T*3, 2)`` float32 texture coordinates (zeros when untextured).
        colors: ``(T*3, 3)`` float32 RGB in [0, 1] (multiplied with the texture when there is one).
        texture: ``(H, W, 3)`` uint8 RGB texture or None.
        paintable: ``(T*3,)`` float32 1 where a random body colour may replace the texel, else 0.
    """

    positions: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    colors: np.ndarray
    texture: np.ndarray | None = None
    paintable: np.ndarray | None = None

    @property
    def n_triangles(self) -> int:
        return len(self.positions) // 3

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned ``(min, max)`` corners of the vertices, metres."""
        return self.positions.min(0), self.positions.max(0)


def _parse_obj(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangulated OBJ -> (positions, uvs, normals) per corner, in OBJ units/axes."""
    v, vt, vn, faces = [], [], [], []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        tag = parts[0]
        if tag == "v":
            v.append([float(p) for p in parts[1:4]])
        elif tag == "vt":
            vt.append([float(p) for p in parts[1:3]])
        elif tag == "vn":
            vn.append([float(p) for p in parts[1:4]])
        elif tag == "f":
            corners = [c.split("/") for c in parts[1:]]
            for k in range(1, len(corners) - 1):  # fan triangulation
                faces.extend([corners[0], corners[k], corners[k + 1]])
    if not faces:
        raise MeshError("OBJ has no faces")
    V, VT, VN = np.asarray(v, np.float64), np.asarray(vt or [[0, 0]], np.float64), np.asarray(vn or [[0, 0, 1]], np.float64)
    iv = np.array([int(c[0]) - 1 for c in faces])
    it = np.array([int(c[1]) - 1 if len(c) > 1 and c[1] else 0 for c in faces])
    inn = np.array([int(c[2]) - 1 if len(c) > 2 and c[2] else 0 for c in faces])
    return V[iv], VT[it], VN[inn]


def _vehicle_params(xml: str) -> tuple[np.ndarray, float, list[np.ndarray], float]:
    """Body offset, body scale, wheel positions and wheel radius from a ``.vehicle`` file."""
    part = re.search(r"<part\b(.*?)>", xml, re.S)
    if part is None:
        raise MeshError("vehicle file has no <part>")
    attrs = part.group(1)
    pos = np.array([float(x) for x in re.search(r'pos="([^"]*)"', attrs).group(1).split(",")])
    scale = float(re.search(r'scale="([^"]*)"', attrs).group(1))
    wheels = [np.array([float(x) for x in m.split(",")]) for m in re.findall(r'<wheel[^>]*\bpos="([^"]*)"', xml)]
    radius = float(re.search(r'<wheel[^>]*\bradius="([^"]*)"', xml).group(1))
    return pos, scale, wheels, radius


def _trigger_to_object(p: np.ndarray) -> np.ndarray:
    """trigger-rally axes (x right, y forward, z up) -> object frame (x forward, y left, z up)."""
    return np.stack([p[:, 1], -p[:, 0], p[:, 2]], axis=1)


def _open_zip() -> zipfile.ZipFile:
    if not TRIGGER_RALLY_ZIP.exists():
        raise MeshError(f"car meshes not found at {TRIGGER_RALLY_ZIP}: {MESH_FIX}")
    return zipfile.ZipFile(TRIGGER_RALLY_ZIP)


def check_meshes() -> None:
    """Raise :class:`MeshError` naming the fix when the car mesh package is not installed."""
    with _open_zip() as z:
        names = set(z.namelist())
    missing = [m for m in CAR_MODELS if f"vehicles/{m}/{m}.obj" not in names]
    if missing:
        raise MeshError(f"car models {missing} missing from {TRIGGER_RALLY_ZIP}: {MESH_FIX}")


@lru_cache(maxsize=None)
def load_car(model: str) -> Mesh:
    """Load a trigger-rally car (body + four wheels) centred on its 3D box, metres.

    The object frame origin is the centre of the axis-aligned bounds of body and wheels, so the
    mesh's GT box is ``size = max - min`` with centre 0.

    Raises:
        MeshError: the package is missing or the model is unknown.
    """
    from PIL import Image

    if model not in CAR_MODELS:
        raise MeshError(f"unknown car model {model!r}; known: {', '.join(CAR_MODELS)}")
    with _open_zip() as z:
        base = f"vehicles/{model}/{model}"
        body_p, body_t, body_n = _parse_obj(z.read(base + ".obj").decode("latin-1"))
        wheel_p, wheel_t, wheel_n = _parse_obj(z.read(base + "_wheel.obj").decode("latin-1"))
        xml = z.read(base + ".vehicle").decode("latin-1")
        tex = np.asarray(Image.open(io.BytesIO(z.read(base + ".png"))).convert("RGB"), dtype=np.uint8)
    offset, scale, wheel_pos, radius = _vehicle_params(xml)
    parts_p = [body_p * scale + offset]
    parts_n = [body_n]
    parts_t = [body_t]
    wheel_scale = radius / np.abs(wheel_p[:, 1:]).max()
    for wp in wheel_pos:
        p = wheel_p * wheel_scale
        if wp[0] < 0:  # mirror left wheels so their rims face outwards
            p = p * np.array([-1.0, 1.0, 1.0])
            n = wheel_n * np.array([-1.0, 1.0, 1.0])
        else:
            n = wheel_n
        parts_p.append(p + wp)
        parts_n.append(n)
        parts_t.append(wheel_t)
    pos = _trigger_to_object(np.concatenate(parts_p))
    nrm = _trigger_to_object(np.concatenate(parts_n))
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    uv = np.concatenate(parts_t)
    lo, hi = pos.min(0), pos.max(0)
    pos -= (lo + hi) / 2
    # The body (not the wheels) may be repainted: the shader replaces its grey-blue paint texels
    # (low saturation, mid brightness) by the car's random colour.
    n_body = len(body_p)
    paint = np.zeros(len(pos), np.float32)
    paint[:n_body] = 1.0
    return Mesh(
        positions=pos.astype(np.float32),
        normals=nrm.astype(np.float32),
        uvs=uv.astype(np.float32),
        colors=np.ones((len(pos), 3), np.float32),
        texture=tex,
        paintable=paint,
    )


def box_mesh(size: np.ndarray | tuple[float, float, float], center=(0.0, 0.0, 0.0), color=(0.5, 0.5, 0.5)) -> Mesh:
    """An axis-aligned box (12 triangles) with flat normals, metres."""
    s = np.asarray(size, np.float64) / 2
    c = np.asarray(center, np.float64)
    faces = []  # (normal, four corners counter-clockwise seen from outside)
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            a, b = [(axis + 1) % 3, (axis + 2) % 3]
            quad = []
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis] = sign
                p[a], p[b] = du, dv * sign
                quad.append(p)
            faces.append((n, quad))
    pos, nrm = [], []
    for n, q in faces:
        for tri in ((0, 1, 2), (0, 2, 3)):
            for k in tri:
                pos.append(q[k] * s + c)
                nrm.append(n)
    pos = np.asarray(pos, np.float32)
    return Mesh(
        positions=pos,
        normals=np.asarray(nrm, np.float32),
        uvs=np.zeros((len(pos), 2), np.float32),
        colors=np.tile(np.asarray(color, np.float32), (len(pos), 1)),
    )


def cylinder_mesh(radius: float, height: float, segments: int = 10, color=(0.5, 0.5, 0.5), radius_top: float | None = None) -> Mesh:
    """A z-up cylinder (or cone frustum with ``radius_top``) standing on z = 0, metres."""
    rt = radius if radius_top is None else radius_top
    ang = np.linspace(0, 2 * np.pi, segments + 1)
    pos, nrm = [], []
    for i in range(segments):
        a0, a1 = ang[i], ang[i + 1]
        b0 = np.array([np.cos(a0), np.sin(a0)])
        b1 = np.array([np.cos(a1), np.sin(a1)])
        p00, p01 = np.r_[radius * b0, 0], np.r_[radius * b1, 0]
        p10, p11 = np.r_[rt * b0, height], np.r_[rt * b1, height]
        n0, n1 = np.r_[b0, 0.3], np.r_[b1, 0.3]
        for p, n in ((p00, n0), (p01, n1), (p11, n1), (p00, n0), (p11, n1), (p10, n0)):
            pos.append(p)
            nrm.append(n / np.linalg.norm(n))
        if rt > 0:
            for p in (np.r_[0, 0, height], p10, p11):
                pos.append(p)
                nrm.append(np.array([0, 0, 1.0]))
    pos = np.asarray(pos, np.float32)
    return Mesh(
        positions=pos,
        normals=np.asarray(nrm, np.float32),
        uvs=np.zeros((len(pos), 2), np.float32),
        colors=np.tile(np.asarray(color, np.float32), (len(pos), 1)),
    )


def merge(meshes: list[Mesh]) -> Mesh:
    """Concatenate untextured meshes into one."""
    return Mesh(
        positions=np.concatenate([m.positions for m in meshes]),
        normals=np.concatenate([m.normals for m in meshes]),
        uvs=np.concatenate([m.uvs for m in meshes]),
        colors=np.concatenate([m.colors for m in meshes]),
    )


def transformed(mesh: Mesh, T: np.ndarray) -> Mesh:
    """The mesh with positions mapped by the 4x4 pose ``T`` (normals rotated)."""
    R, t = T[:3, :3], T[:3, 3]
    return Mesh(
        positions=(mesh.positions @ R.T + t).astype(np.float32),
        normals=(mesh.normals @ R.T).astype(np.float32),
        uvs=mesh.uvs,
        colors=mesh.colors,
        texture=mesh.texture,
        paintable=mesh.paintable,
    )


def sample_surface(mesh: Mesh, n: int, seed: int) -> np.ndarray:
    """``(n, 3)`` float64 points sampled uniformly (by area) on the mesh surface, object frame."""
    tri = mesh.positions.reshape(-1, 3, 3).astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(tri), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    a, b, c = 1 - s, s * (1 - r2), s * r2
    t = tri[idx]
    return a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]


def decimate(mesh: Mesh, cell_m: float) -> Mesh:
    """Level-of-detail copy by vertex clustering on a ``cell_m`` grid.

    Vertices in one grid cell merge to their mean (so the result stays inside the original's
    bounding box); triangles that collapse or repeat are dropped; UVs and paint flags are kept per
    corner. Used for distant objects, where llvmpipe's cost is per triangle.
    """
    P = mesh.positions.astype(np.float64)
    q = np.floor(P / cell_m).astype(np.int64)
    _, inv = np.unique(q, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n_cells = int(inv.max()) + 1
    mean = np.zeros((n_cells, 3))
    np.add.at(mean, inv, P)
    mean /= np.bincount(inv, minlength=n_cells)[:, None]
    nrm = np.zeros((n_cells, 3))
    np.add.at(nrm, inv, mesh.normals.astype(np.float64))
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    t = inv.reshape(-1, 3)
    ok = (t[:, 0] != t[:, 1]) & (t[:, 1] != t[:, 2]) & (t[:, 0] != t[:, 2])
    _, first = np.unique(np.sort(t, axis=1), axis=0, return_index=True)
    keep = np.zeros(len(t), bool)
    keep[first] = True
    keep &= ok
    corners = (np.nonzero(keep)[0][:, None] * 3 + np.arange(3)).reshape(-1)
    return Mesh(
        positions=mean[inv[corners]].astype(np.float32),
        normals=nrm[inv[corners]].astype(np.float32),
        uvs=mesh.uvs[corners],
        colors=mesh.colors[corners],
        texture=mesh.texture,
        paintable=None if mesh.paintable is None else mesh.paintable[corners],
    )
