"""Offscreen OpenGL renderer (moderngl over EGL) giving colour, camera-z depth and instance ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ba_perception.data.world.meshes import Mesh

if TYPE_CHECKING:
    import moderngl

# Meshes are drawn instanced: one draw per mesh per frame, pose/paint/id per instance
# (llvmpipe's cost is dominated by per-draw overhead, not by triangles).
_VS = """
#version 330
uniform mat4 P;
in vec3 in_pos;
in vec3 in_nrm;
in vec2 in_uv;
in vec3 in_col;
in float in_paint;
in mat4 i_mv;
in mat3 i_nm;
in vec3 i_paint;
in vec3 i_tint;
in float i_id;
out vec3 v_pos;
out vec3 v_nrm;
out vec2 v_uv;
out vec3 v_col;
out float v_paint;
flat out vec3 v_paintc;
flat out int v_inst;
void main() {
    vec4 pc = i_mv * vec4(in_pos, 1.0);
    v_pos = pc.xyz;
    v_nrm = i_nm * in_nrm;
    v_uv = in_uv;
    v_col = in_col * i_tint;
    v_paint = in_paint;
    v_paintc = i_paint;
    v_inst = int(i_id + 0.5);
    gl_Position = P * pc;
}
"""

# Batched primitives: vertices already in the camera frame, instance id per vertex.
_VS_BATCH = """
#version 330
uniform mat4 P;
in vec3 in_pos;
in vec3 in_nrm;
in vec3 in_col;
in float in_id;
out vec3 v_pos;
out vec3 v_nrm;
out vec2 v_uv;
out vec3 v_col;
out float v_paint;
flat out vec3 v_paintc;
flat out int v_inst;
void main() {
    v_pos = in_pos;
    v_nrm = in_nrm;
    v_uv = vec2(0.0);
    v_col = in_col;
    v_paint = 0.0;
    v_paintc = vec3(0.5);
    v_inst = int(in_id + 0.5);
    gl_Position = P * vec4(in_pos, 1.0);
}
"""

_FS = """
#version 330
uniform sampler2D tex;
uniform bool use_tex;
uniform vec3 light;      // towards the sun, camera frame
uniform float ambient;
uniform vec3 fog_color;
uniform float fog_density;
in vec3 v_pos;
in vec3 v_nrm;
in vec2 v_uv;
in vec3 v_col;
in float v_paint;
flat in vec3 v_paintc;
flat in int v_inst;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
layout(location = 2) out int f_inst;
void main() {
    vec3 base = v_col;
    if (use_tex) {
        vec3 t = texture(tex, v_uv).rgb;
        float mx = max(t.r, max(t.g, t.b));
        float mn = min(t.r, min(t.g, t.b));
        float lum = dot(t, vec3(0.299, 0.587, 0.114));
        if (v_paint > 0.5 && (mx - mn) < 0.16 && lum > 0.16 && lum < 0.62) {
            t = v_paintc * (lum / 0.36);   // body paint replaced by the car's colour, keeping shading
        }
        base *= t;
    }
    vec3 n = normalize(v_nrm);
    if (dot(n, v_pos) > 0.0) n = -n;   // two-sided: normal towards the camera
    float diff = max(dot(n, light), 0.0);
    vec3 c = base * (ambient + (1.0 - ambient) * diff);
    float fog = 1.0 - exp(-fog_density * length(v_pos));
    f_color = vec4(mix(c, fog_color, fog), 1.0);
    f_depth = v_pos.z;
    f_inst = v_inst;
}
"""

_SKY_VS = """
#version 330
in vec2 in_xy;
out float v_y;
void main() { v_y = in_xy.y; gl_Position = vec4(in_xy, 1.0, 1.0); }
"""

_SKY_FS = """
#version 330
uniform vec3 top;
uniform vec3 horizon;
uniform float v_horizon;   // NDC y of the horizon row (approximate, from the camera pitch)
in float v_y;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
layout(location = 2) out int f_inst;
void main() {
    float a = clamp((v_horizon - v_y) * 1.5, 0.0, 1.0);
    f_color = vec4(mix(horizon, top, a), 1.0);
    f_depth = uintBitsToFloat(0x7F800000u);   // +inf: nothing there
    f_inst = 0;
}
"""

# Silhouettes into an atlas: each instance is shifted from its image rect to its atlas tile and
# clipped to the tile with four clip distances (tiles never bleed into each other).
_SIL_MAP = """
uniform mat4 P;
uniform vec2 image_size;   // W, H
uniform vec2 atlas_size;   // AW, AH
vec4 to_atlas(vec4 c, vec2 shift, vec4 tile) {
    // image window x = (c.x / c.w + 1) W / 2 ; atlas window = image window + shift
    vec4 o = c;
    o.xy = (c.xy + c.ww) * image_size / atlas_size + c.ww * (2.0 * shift / atlas_size - 1.0);
    vec2 win_w = (o.xy + o.ww) * atlas_size * 0.5;   // atlas window coordinates times w
    gl_ClipDistance[0] = win_w.x - tile.x * o.w;
    gl_ClipDistance[1] = tile.z * o.w - win_w.x;
    gl_ClipDistance[2] = win_w.y - tile.y * o.w;
    gl_ClipDistance[3] = tile.w * o.w - win_w.y;
    return o;
}
"""

_SIL_VS = """
#version 330
""" + _SIL_MAP + """
in vec3 in_pos;
in mat4 i_mv;
in vec2 i_shift;
in vec4 i_tile;   // x0, y0, x1, y1 in atlas pixels
void main() { gl_Position = to_atlas(P * (i_mv * vec4(in_pos, 1.0)), i_shift, i_tile); }
"""

_SIL_BATCH_VS = """
#version 330
""" + _SIL_MAP + """
uniform vec2 shift;
uniform vec4 tile;
in vec3 in_pos;
void main() { gl_Position = to_atlas(P * vec4(in_pos, 1.0), shift, tile); }
"""

_SIL_FS = """
#version 330
layout(location = 0) out float f_mask;
void main() { f_mask = 1.0; }
"""

_GL_CLIP_DISTANCE0 = 0x3000


class RenderError(RuntimeError):
    """Raised when no OpenGL context can be created or a draw is invalid."""


@dataclass
class Draw:
    """One mesh drawn with a pose.

    Attributes:
        mesh_key: key given to :meth:`Renderer.add_mesh`, or ``"batch"`` for vertices
            ``first .. first + count`` of the primitives uploaded by :meth:`Renderer.set_batch`
            (already in the camera frame; ``T_cam_model``, ``inst`` and ``tint`` are then ignored).
        T_cam_model: 4x4 model-to-camera transform (may include scale), float.
        inst: instance id written to the id buffer (0 = background).
        tint: RGB multiplier of the vertex colours.
        paint: RGB body paint for textured cars.
    """

    mesh_key: str
    T_cam_model: np.ndarray
    inst: int = 0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    paint: tuple[float, float, float] = (0.5, 0.5, 0.5)
    first: int = 0
    count: int = -1


def projection_matrix(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """OpenGL clip matrix for the optical frame that puts image row 0 in GL row 0.

    Pixel (u, v) = (fx x/z + cx, fy y/z + cy) has its centre at GL window (u + 0.5, v + 0.5), so
    the framebuffer read back needs no flip and integer pixels are pixel centres, as in
    ``core/geometry.py``.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    # x_ndc = 2 (u + 0.5) / W - 1 with u = fx x/z + cx  ->  x_clip = 2 fx / W x + (2 (cx + .5) / W - 1) z
    P[0, 0] = 2 * fx / width
    P[0, 2] = 2 * (cx + 0.5) / width - 1
    P[1, 1] = 2 * fy / height
    P[1, 2] = 2 * (cy + 0.5) / height - 1
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


class _InstanceBuffer:
    """A growable per-instance vertex buffer and the VAOs of one mesh that read it."""

    def __init__(self) -> None:
        self.cap = 0
        self.buf: Any = None  # moderngl Buffer and VertexArrays, made on first use by Renderer._instances
        self.vao: Any = None
        self.sil_vao: Any = None


def _uniform(prog: moderngl.Program, name: str) -> moderngl.Uniform:
    """The uniform ``name`` of a shader program (a program's members also include blocks and attributes)."""
    return cast("moderngl.Uniform", prog[name])


class Renderer:
    """Renders meshes with per-draw poses into colour (RGB8), depth (camera z, float32) and ids.

    Args:
        width, height: image size, pixels.
        K: 3x3 intrinsics.
        near, far: clip distances, metres.

    Raises:
        RenderError: no EGL/OpenGL context is available.
    """

    def __init__(self, width: int, height: int, K: np.ndarray, near: float = 0.1, far: float = 600.0) -> None:
        import moderngl

        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")  # type: ignore[arg-type]  # stub types **settings as dicts
        except Exception as err:  # noqa: BLE001 - any context failure is the same user problem
            raise RenderError(
                f"cannot create an EGL OpenGL context ({err}); install libegl1 libegl-mesa0 libgl1-mesa-dri "
                "(bash scripts/setup.sh)"
            ) from err
        self.width, self.height = width, height
        self.K = np.asarray(K, np.float64)
        self.near = near
        self.P = projection_matrix(self.K, width, height, near, far)
        ctx = self.ctx
        P = self.P.T.astype("f4").tobytes()
        self.prog = ctx.program(vertex_shader=_VS, fragment_shader=_FS)
        self.batch_prog = ctx.program(vertex_shader=_VS_BATCH, fragment_shader=_FS)
        self.sky = ctx.program(vertex_shader=_SKY_VS, fragment_shader=_SKY_FS)
        self.sil = ctx.program(vertex_shader=_SIL_VS, fragment_shader=_SIL_FS)
        self.sil_batch = ctx.program(vertex_shader=_SIL_BATCH_VS, fragment_shader=_SIL_FS)
        for prog in (self.prog, self.batch_prog, self.sil, self.sil_batch):
            _uniform(prog, "P").write(P)
        _uniform(self.batch_prog, "use_tex").value = False
        self.color_rb = ctx.renderbuffer((width, height), 4)
        self.depth_rb = ctx.renderbuffer((width, height), 1, dtype="f4")
        self.inst_rb = ctx.renderbuffer((width, height), 1, dtype="i4")
        self.fbo = ctx.framebuffer([self.color_rb, self.depth_rb, self.inst_rb], ctx.depth_renderbuffer((width, height)))
        # Silhouette atlas: as wide as the image, several image heights tall (see silhouettes()).
        self._atlas_size = (width, min(4 * height, 8192))
        self.sil_fbo = ctx.framebuffer([ctx.renderbuffer(self._atlas_size, 1, dtype="f1")])
        for prog in (self.sil, self.sil_batch):
            _uniform(prog, "image_size").value = (float(width), float(height))
            _uniform(prog, "atlas_size").value = tuple(float(v) for v in self._atlas_size)
        sky_vbo = ctx.buffer(np.array([-1, -1, 3, -1, -1, 3], "f4").tobytes())
        self.sky_vao = ctx.vertex_array(self.sky, [(sky_vbo, "2f", "in_xy")])
        self._meshes: dict[str, tuple] = {}      # key -> (vbo, texture)
        self._inst: dict[str, _InstanceBuffer] = {}
        self._sil_inst: dict[str, _InstanceBuffer] = {}
        self._batch_vbo: Any = None  # moderngl Buffer / VertexArrays of the batched primitives, made by set_batch
        self._batch_vao: Any = None
        self._batch_sil: Any = None
        self._batch_cap = 0
        self._batch_n = 0

    def release(self) -> None:
        """Free the GL context."""
        self.ctx.release()

    def has_mesh(self, key: str) -> bool:
        """Whether a mesh was uploaded under ``key``."""
        return key in self._meshes

    def add_mesh(self, key: str, mesh: Mesh) -> None:
        """Upload a mesh under ``key`` (idempotent)."""
        if key in self._meshes:
            return
        import moderngl

        n = len(mesh.positions)
        paint = mesh.paintable if mesh.paintable is not None else np.zeros(n, np.float32)
        data = np.concatenate([mesh.positions, mesh.normals, mesh.uvs, mesh.colors, paint[:, None]], axis=1)
        vbo = self.ctx.buffer(np.ascontiguousarray(data, dtype="f4").tobytes())
        tex = None
        if mesh.texture is not None:
            img = np.ascontiguousarray(np.flipud(mesh.texture))  # OBJ v = 0 is the bottom row
            tex = self.ctx.texture((img.shape[1], img.shape[0]), 3, img.tobytes())
            tex.build_mipmaps()
            tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        self._meshes[key] = (vbo, tex, n)
        self._inst[key] = _InstanceBuffer()
        self._sil_inst[key] = _InstanceBuffer()

    def set_batch(self, positions: np.ndarray, normals: np.ndarray, colors: np.ndarray, ids: np.ndarray) -> None:
        """Upload this frame's batched primitives.

        Upload this frame's batched primitives: ``(N, 3)`` camera-frame positions (three per
        triangle), normals, RGB colours and ``(N,)`` instance ids; drawn with ``Draw("batch", ...)``.
        """
        n = len(positions)
        data = np.concatenate([positions, normals, colors, ids[:, None]], axis=1).astype("f4")
        if n > self._batch_cap:
            cap = max(4096, 2 * n)
            self._batch_vbo = self.ctx.buffer(reserve=cap * 40, dynamic=True)
            self._batch_vao = self.ctx.vertex_array(
                self.batch_prog, [(self._batch_vbo, "3f 3f 3f 1f", "in_pos", "in_nrm", "in_col", "in_id")])
            self._batch_sil = self.ctx.vertex_array(self.sil_batch, [(self._batch_vbo, "3f 28x", "in_pos")])
            self._batch_cap = cap
        if n:
            self._batch_vbo.write(data.tobytes())
        self._batch_n = n

    def _instances(self, key: str, data: np.ndarray, sil: bool):
        """Write per-instance rows to the mesh's instance buffer (growing it) and return its VAO."""
        ib = (self._sil_inst if sil else self._inst)[key]
        n = len(data)
        if n > ib.cap:
            vbo, _, _ = self._meshes[key]
            ib.cap = max(16, 2 * n)
            ib.buf = self.ctx.buffer(reserve=ib.cap * data.shape[1] * 4, dynamic=True)
            if sil:
                ib.vao = self.ctx.vertex_array(self.sil, [(vbo, "3f 36x", "in_pos"),
                                                          (ib.buf, "16f 2f 4f/i", "i_mv", "i_shift", "i_tile")])
            else:
                ib.vao = self.ctx.vertex_array(self.prog, [
                    (vbo, "3f 3f 2f 3f 1f", "in_pos", "in_nrm", "in_uv", "in_col", "in_paint"),
                    (ib.buf, "16f 9f 3f 3f 1f/i", "i_mv", "i_nm", "i_paint", "i_tint", "i_id"),
                ])
        ib.buf.write(np.ascontiguousarray(data, dtype="f4").tobytes())
        return ib.vao

    def render(self, draws: list[Draw], light_cam: np.ndarray, ambient: float, sky_top, sky_horizon,
               fog_color=(0.75, 0.8, 0.85), fog_density: float = 0.002) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render draws into colour, depth and instance images.

        Render draws; returns ``image (H, W, 3) uint8``, ``depth (H, W) float32`` camera z in
        metres (inf where only sky), ``instance (H, W) int32``.
        """
        import moderngl

        ctx = self.ctx
        self.fbo.use()
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
        ctx.depth_func = "<="
        self.fbo.clear(0.0, 0.0, 0.0, 1.0, depth=1.0)
        for prog in (self.prog, self.batch_prog):
            _uniform(prog, "light").value = tuple(float(v) for v in light_cam)
            _uniform(prog, "ambient").value = float(ambient)
            _uniform(prog, "fog_color").value = tuple(float(v) for v in fog_color)
            _uniform(prog, "fog_density").value = float(fog_density)
        by_mesh: dict[str, list[Draw]] = {}
        for d in draws:
            if d.mesh_key == "batch":
                count = self._batch_n - d.first if d.count < 0 else d.count
                if count > 0:
                    self._batch_vao.render(moderngl.TRIANGLES, vertices=count, first=d.first)
            else:
                by_mesh.setdefault(d.mesh_key, []).append(d)
        for key, ds in by_mesh.items():
            T = np.stack([np.asarray(d.T_cam_model, np.float64) for d in ds])
            nm = np.linalg.inv(T[:, :3, :3])  # (R S)^-T, stored column-major -> rows of the inverse
            rows = np.concatenate([
                T.transpose(0, 2, 1).reshape(-1, 16),            # mat4 column-major
                nm.reshape(-1, 9),                               # mat3 column-major of inv^T
                np.array([d.paint for d in ds], np.float64),
                np.array([d.tint for d in ds], np.float64),
                np.array([[d.inst] for d in ds], np.float64),
            ], axis=1)
            vao = self._instances(key, rows, sil=False)
            _, tex, _ = self._meshes[key]
            _uniform(self.prog, "use_tex").value = tex is not None
            if tex is not None:
                tex.use(0)
                _uniform(self.prog, "tex").value = 0
            vao.render(moderngl.TRIANGLES, instances=len(ds))
        _uniform(self.sky, "top").value = tuple(float(v) for v in sky_top)
        _uniform(self.sky, "horizon").value = tuple(float(v) for v in sky_horizon)
        _uniform(self.sky, "v_horizon").value = float(2 * (self.K[1, 2] + 0.5) / self.height - 1)
        self.sky_vao.render(moderngl.TRIANGLES)
        W, H = self.width, self.height
        img = np.frombuffer(self.fbo.read(components=3, attachment=0), np.uint8).reshape(H, W, 3)
        depth = np.frombuffer(self.fbo.read(components=1, attachment=1, dtype="f4"), np.float32).reshape(H, W)
        inst = np.frombuffer(self.fbo.read(components=1, attachment=2, dtype="i4"), np.int32).reshape(H, W)
        return img, depth, inst

    def silhouettes(self, groups: list[list[Draw]], rects: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
        """Unoccluded masks of groups of draws inside their pixel rects.

        Full (unoccluded) masks of each group of draws inside its pixel rect ``(x0, y0, x1, y1)``
        (exclusive end); returns one bool array ``(y1 - y0, x1 - x0)`` per group.

        Rects are packed into shelves of an atlas framebuffer; every draw is shifted to its tile
        and clipped to it in the vertex shader, so a whole atlas is one instanced draw per mesh
        and one readback.
        """
        import moderngl

        ctx = self.ctx
        AW, AH = self._atlas_size
        out: list[np.ndarray | None] = [None] * len(groups)
        todo = [k for k, (x0, y0, x1, y1) in enumerate(rects) if x1 > x0 and y1 > y0]
        for k, (x0, y0, x1, y1) in enumerate(rects):
            if not (x1 > x0 and y1 > y0):
                out[k] = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), bool)
        todo.sort(key=lambda k: -(rects[k][3] - rects[k][1]))  # tallest first keeps shelves tight
        self.sil_fbo.use()
        ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE | moderngl.BLEND)
        for i in range(4):
            ctx.enable_direct(_GL_CLIP_DISTANCE0 + i)
        while todo:
            placed, rest = [], []
            sx = sy = shelf_h = 0
            for k in todo:
                x0, y0, x1, y1 = rects[k]
                w, h = x1 - x0, y1 - y0
                if sx + w > AW:
                    sx, sy, shelf_h = 0, sy + shelf_h, 0
                if sy + h > AH:
                    rest.append(k)
                    continue
                placed.append((k, sx, sy))
                sx += w
                shelf_h = max(shelf_h, h)
            used_h = max(ty + rects[k][3] - rects[k][1] for k, _, ty in placed)
            self.sil_fbo.viewport = (0, 0, AW, AH)
            self.sil_fbo.clear(0.0, viewport=(0, 0, AW, used_h))
            by_mesh: dict[str, list[np.ndarray]] = {}
            for k, tx, ty in placed:
                x0, y0, x1, y1 = rects[k]
                shift = (tx - x0, ty - y0)
                tile = (tx, ty, tx + x1 - x0, ty + y1 - y0)
                for d in groups[k]:
                    if d.mesh_key == "batch":
                        _uniform(self.sil_batch, "shift").value = tuple(float(v) for v in shift)
                        _uniform(self.sil_batch, "tile").value = tuple(float(v) for v in tile)
                        self._batch_sil.render(moderngl.TRIANGLES, vertices=d.count, first=d.first)
                    else:
                        T = np.asarray(d.T_cam_model, np.float64)
                        by_mesh.setdefault(d.mesh_key, []).append(np.concatenate([T.T.reshape(16), shift, tile]))
            for key, rows in by_mesh.items():
                self._instances(key, np.stack(rows), sil=True).render(moderngl.TRIANGLES, instances=len(rows))
            atlas = np.frombuffer(self.sil_fbo.read(viewport=(0, 0, AW, used_h), components=1, dtype="f1"), np.uint8)
            atlas = atlas.reshape(used_h, AW)
            for k, tx, ty in placed:
                x0, y0, x1, y1 = rects[k]
                out[k] = atlas[ty: ty + y1 - y0, tx: tx + x1 - x0] > 0
            todo = rest
        for i in range(4):
            ctx.disable_direct(_GL_CLIP_DISTANCE0 + i)
        return out  # type: ignore[return-value]
