"""Triangle meshes for the synthetic world: trigger-rally and TORCS car models and primitives.

Car meshes come from Debian packages and are never committed: ``trigger-rally-data`` (9 rally
cars, read straight from its data.zip) and ``torcs-data`` (AC3D road and touring cars, GPL-2+ or
Free Art License per model, see /usr/share/doc/torcs-data/copyright), converted once at set-up
with ``assimp`` (Debian ``assimp-utils``) into OBJ + PNG under :func:`torcs_cache_dir`
(``python -m ba_perception.data.world.meshes --convert-torcs``, run by scripts/setup.sh).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
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
TORCS_CARS_DIR = Path("/usr/share/games/torcs/cars")
# TORCS road / touring cars used (the open-wheel car1-ow1 and the dune buggy are left out).
TORCS_MODELS: tuple[str, ...] = (
    "p406", "acura-nsx-sz", "car1-stock1", "car1-trb1", "car1-trb3", "car2-trb1", "car3-trb1", "car4-trb1",
    "car5-trb1", "155-DTM", "baja-bug", "car1-stock2", "car6-trb1", "car7-trb1", "car8-trb1",
)
TORCS_FIX = ("convert the TORCS car meshes with `bash scripts/setup.sh` (needs Debian torcs-data and assimp-utils; "
             "it runs `python -m ba_perception.data.world.meshes --convert-torcs`)")
# Model-disjoint pools (world v3): 'train' cars appear in train / val / test, 'cross' cars only in
# test_cross (other bodies, not just other liveries of a training body).
CAR_POOLS: dict[str, tuple[str, ...]] = {
    "train": ("cordo_kitcar", "cordo_super500", "cordo_wrc", "evo_kitcar", "evo_super500", "evo_wrc",
              "p406", "acura-nsx-sz", "car1-stock1", "car1-trb1", "car1-trb3", "car2-trb1", "car3-trb1",
              "car4-trb1", "car5-trb1"),
    "cross": ("fox_kitcar", "fox_super500", "fox_wrc", "155-DTM", "baja-bug", "car1-stock2", "car6-trb1",
              "car7-trb1", "car8-trb1"),
}
CAR_POOLS["all"] = CAR_POOLS["train"] + CAR_POOLS["cross"]
# Real overall length of the car each trigger-rally body stands for (Ford Escort RS Cosworth,
# Mitsubishi Lancer Evolution, VW Fox), metres; TORCS models carry theirs in their .xml.
TRIGGER_LENGTH_M = {"cordo": 4.21, "evo": 4.36, "fox": 3.83}


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
        """Number of triangles (three positions each)."""
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
    pos = np.array([float(x) for x in _vehicle_field(r'pos="([^"]*)"', attrs, "<part pos>").split(",")])
    scale = float(_vehicle_field(r'scale="([^"]*)"', attrs, "<part scale>"))
    wheels = [np.array([float(x) for x in m.split(",")]) for m in re.findall(r'<wheel[^>]*\bpos="([^"]*)"', xml)]
    radius = float(_vehicle_field(r'<wheel[^>]*\bradius="([^"]*)"', xml, "<wheel radius>"))
    return pos, scale, wheels, radius


def _vehicle_field(pattern: str, text: str, what: str) -> str:
    """The first group of ``pattern`` in a ``.vehicle`` file's ``text``; :class:`MeshError` naming ``what`` when absent."""
    m = re.search(pattern, text)
    if m is None:
        raise MeshError(f"vehicle file has no {what}")
    return m.group(1)


def _trigger_to_object(p: np.ndarray) -> np.ndarray:
    """trigger-rally axes (x right, y forward, z up) -> object frame (x forward, y left, z up)."""
    return np.stack([p[:, 1], -p[:, 0], p[:, 2]], axis=1)


def _open_zip() -> zipfile.ZipFile:
    if not TRIGGER_RALLY_ZIP.exists():
        raise MeshError(f"car meshes not found at {TRIGGER_RALLY_ZIP}: {MESH_FIX}")
    return zipfile.ZipFile(TRIGGER_RALLY_ZIP)


def check_meshes(models: tuple[str, ...] = CAR_MODELS) -> None:
    """Raise :class:`MeshError` naming the fix when a car mesh of ``models`` is not installed."""
    with _open_zip() as z:
        names = set(z.namelist())
    missing = [m for m in models if m in CAR_MODELS and f"vehicles/{m}/{m}.obj" not in names]
    if missing:
        raise MeshError(f"car models {missing} missing from {TRIGGER_RALLY_ZIP}: {MESH_FIX}")
    torcs = [m for m in models if m in TORCS_MODELS]
    if torcs:
        d = torcs_cache_dir()
        missing = [m for m in torcs if not (d / m / "meta.json").is_file()]
        if missing:
            raise MeshError(f"TORCS car models {missing} missing from {d}: {TORCS_FIX}")


def torcs_cache_dir() -> Path:
    """Where the converted TORCS cars live: ``$BA_PERCEPTION_MESH_CACHE/torcs`` or ``<venv>/share/ba_perception/torcs``."""
    root = os.environ.get("BA_PERCEPTION_MESH_CACHE")
    return (Path(root) if root else Path(sys.prefix) / "share" / "ba_perception") / "torcs"


def _torcs_xml_params(xml: str) -> dict:
    """Overall size, axle positions and wheel geometry from a TORCS car .xml (metres)."""
    def num(section: str, name: str) -> float:
        sec = re.search(rf'<section name="{re.escape(section)}">(.*?)</section>', xml, re.S)
        m = re.search(rf'<attnum name="{re.escape(name)}"[^>]*\bval="([^"]*)"', sec.group(1) if sec else "")
        if m is None:
            raise MeshError(f"TORCS car xml has no {section}/{name}")
        return float(m.group(1))

    rim_in = num("Front Right Wheel", "rim diameter")
    tyre = num("Front Right Wheel", "tire width") / 1000 * num("Front Right Wheel", "tire height-width ratio")
    return {"length": num("Car", "body length"), "front_x": num("Front Axle", "xpos"), "rear_x": num("Rear Axle", "xpos"),
            "wheel_y": abs(num("Front Right Wheel", "ypos")), "wheel_radius": rim_in * 0.0254 / 2 + tyre,
            "tyre_width": num("Front Right Wheel", "tire width") / 1000}


def convert_torcs(out_dir: Path | None = None, src_dir: Path = TORCS_CARS_DIR) -> list[str]:
    """Convert the TORCS cars (AC3D) to OBJ + PNG + meta.json under ``out_dir``; skips finished ones.

    Returns:
        The converted (or already present) model names.

    Raises:
        MeshError: torcs-data or the ``assimp`` command is missing, or a conversion fails.
    """
    from PIL import Image

    out_dir = out_dir or torcs_cache_dir()
    if not src_dir.is_dir():
        raise MeshError(f"TORCS cars not found at {src_dir}: apt-get install torcs-data")
    assimp = shutil.which("assimp")
    if assimp is None:
        raise MeshError("the assimp command is missing: apt-get install assimp-utils")
    done = []
    for m in TORCS_MODELS:
        dst = out_dir / m
        if (dst / "meta.json").is_file():
            done.append(m)
            continue
        dst.mkdir(parents=True, exist_ok=True)
        src = src_dir / m
        res = subprocess.run([assimp, "export", str(src / f"{m}.acc"), str(dst / "body.obj")], capture_output=True, text=True)
        if res.returncode != 0 or not (dst / "body.obj").is_file():
            raise MeshError(f"assimp could not convert {src / f'{m}.acc'}: {res.stderr.strip()[-300:]}")
        Image.open(src / f"{m}.rgb").convert("RGB").save(dst / "body.png")
        meta = _torcs_xml_params((src / f"{m}.xml").read_text(errors="replace"))
        (dst / "meta.json").write_text(json.dumps(meta, indent=1))
        done.append(m)
    return done


def _wheel_mesh(radius: float, width: float, segments: int = 14) -> Mesh:
    """A dark wheel (cylinder about the object y axis) centred at the origin."""
    c = cylinder_mesh(radius, width, segments, (0.08, 0.08, 0.08))
    T = np.eye(4)
    T[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]  # z up -> y
    T[:3, 3] = [0.0, -width / 2, 0.0]
    return transformed(c, T)


def _load_torcs(model: str) -> Mesh:
    from PIL import Image

    d = torcs_cache_dir() / model
    if not (d / "meta.json").is_file():
        raise MeshError(f"TORCS car {model} not converted in {d}: {TORCS_FIX}")
    meta = json.loads((d / "meta.json").read_text())
    p, t, n = _parse_obj((d / "body.obj").read_text(errors="replace"))
    # assimp writes AC3D y-up: x forward, y up, z right -> object frame x forward, y left, z up.
    pos = np.stack([p[:, 0], -p[:, 2], p[:, 1]], 1)
    nrm = np.stack([n[:, 0], -n[:, 2], n[:, 1]], 1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    r = float(meta["wheel_radius"])
    pos[:, 2] += 0.1 - pos[:, 2].min()  # body sill 10 cm above the road, wheels below it
    parts = [Mesh(pos.astype(np.float32), nrm.astype(np.float32), t.astype(np.float32),
                  np.ones((len(pos), 3), np.float32))]
    wheel = _wheel_mesh(r, min(float(meta["tyre_width"]), 0.3))
    for x in (meta["front_x"], meta["rear_x"]):
        for side in (1, -1):
            T = np.eye(4)
            T[:3, 3] = [x, side * meta["wheel_y"], r]
            parts.append(transformed(wheel, T))
    P = np.concatenate([m.positions for m in parts])
    lo, hi = P.min(0), P.max(0)
    n_body = len(pos)
    paint = np.zeros(len(P), np.float32)
    paint[:n_body] = 1.0
    # TORCS liveries are mostly one blue; in grey the renderer repaints their mid-grey texels with
    # the car's random colour (as for trigger-rally bodies), keeping stickers and shading.
    tex = np.asarray(Image.open(d / "body.png").convert("L").convert("RGB"), dtype=np.uint8)
    return Mesh(
        positions=(P - (lo + hi) / 2).astype(np.float32),
        normals=np.concatenate([m.normals for m in parts]).astype(np.float32),
        uvs=np.concatenate([m.uvs for m in parts]).astype(np.float32),
        colors=np.concatenate([m.colors for m in parts]).astype(np.float32),
        texture=tex,
        paintable=paint,
    )


def real_length_m(model: str) -> float:
    """Overall length of the real car a model stands for, metres (sets its size in world v3)."""
    if model in TORCS_MODELS:
        return float(json.loads((torcs_cache_dir() / model / "meta.json").read_text())["length"])
    return TRIGGER_LENGTH_M[model.split("_")[0]]


@cache
def load_car(model: str) -> Mesh:
    """Load a trigger-rally car (body + four wheels) centred on its 3D box, metres.

    The object frame origin is the centre of the axis-aligned bounds of body and wheels, so the
    mesh's GT box is ``size = max - min`` with centre 0.

    Raises:
        MeshError: the package is missing or the model is unknown.
    """
    from PIL import Image

    if model in TORCS_MODELS:
        return _load_torcs(model)
    if model not in CAR_MODELS:
        raise MeshError(f"unknown car model {model!r}; known: {', '.join(CAR_MODELS + TORCS_MODELS)}")
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


@cache
def load_car_lod(model: str, cell_m: float) -> Mesh:
    """:func:`load_car` decimated on a ``cell_m`` grid (:func:`decimate`), cached per process."""
    return decimate(load_car(model), cell_m)


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
    positions = np.asarray(pos, np.float32)
    return Mesh(
        positions=positions,
        normals=np.asarray(nrm, np.float32),
        uvs=np.zeros((len(positions), 2), np.float32),
        colors=np.tile(np.asarray(color, np.float32), (len(positions), 1)),
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
    positions = np.asarray(pos, np.float32)
    return Mesh(
        positions=positions,
        normals=np.asarray(nrm, np.float32),
        uvs=np.zeros((len(positions), 2), np.float32),
        colors=np.tile(np.asarray(color, np.float32), (len(positions), 1)),
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


def sample_surface(mesh: Mesh, n: int, seed: int | Sequence[int]) -> np.ndarray:
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


if __name__ == "__main__":  # set-up step: python -m ba_perception.data.world.meshes --convert-torcs
    import argparse

    ap = argparse.ArgumentParser(description="convert the TORCS car meshes for the synthetic world")
    ap.add_argument("--convert-torcs", action="store_true", required=True)
    ap.add_argument("--out", type=Path, default=None, help=f"cache folder (default {torcs_cache_dir()})")
    a = ap.parse_args()
    try:
        names = convert_torcs(a.out)
    except MeshError as err:
        raise SystemExit(f"error: {err}") from err
    print(f"{len(names)} TORCS cars in {a.out or torcs_cache_dir()}")
