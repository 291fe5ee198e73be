"""Procedural driving scenes: a curved road with lanes, scenery, ego motion and traffic agents."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ba_perception.data.world import meshes as M
from ba_perception.data.world.config import WorldConfig

CAR_SIZE_RANGE = ((0.95, 1.3), (1.0, 1.15), (0.95, 1.15))  # per-axis scale of the meshes (l, w, h)
PED_SIZE = np.array([0.8, 0.6, 1.75])
CYC_SIZE = np.array([1.76, 0.6, 1.73])


@dataclass
class Road:
    """A flat road centreline sampled every ``ds`` metres (odom frame, z = 0).

    Attributes:
        s: ``(N,)`` arc length, metres.  x, y: ``(N,)`` centreline, metres.  heading: ``(N,)`` rad.
        lane_width: metres.  lanes: lanes per direction.  parking: width of the parking strip
            beyond the outer lane (0 = none), metres.  sidewalk: sidewalk width, metres.
    """

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    lane_width: float
    lanes: int
    parking: float
    sidewalk: float

    @property
    def edge(self) -> float:
        """Lateral offset of the road edge (kerb) from the centreline, metres."""
        return self.lanes * self.lane_width + self.parking

    def pose(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point at arc length ``s`` and lateral offset ``d`` (left positive): ``(x, y, heading)``."""
        x = np.interp(s, self.s, self.x)
        y = np.interp(s, self.s, self.y)
        h = np.interp(s, self.s, self.heading)
        return x - d * np.sin(h), y + d * np.cos(h), h


@dataclass
class Agent:
    """One traffic participant: identity, look and a trajectory along the road.

    The trajectory is ``s(t)`` (sampled on the world's time grid) and ``d(t)``; the heading is the
    road heading plus ``yaw_offset`` plus the direction of motion in road coordinates.

    Attributes:
        track_id: GT id (> 0; also the instance id in renders).
        cls: 'car' | 'pedestrian' | 'cyclist'.
        model: car mesh name, 'box' (a plain box of the GT size), 'pedestrian' or 'cyclist'.
        size: (l, w, h) metres.
        scale: per-axis scale applied to the model mesh (cars).
        color: RGB in [0, 1] (car paint / clothes).
        s_t: ``(G,)`` arc length on the time grid, metres.
        d0, d1, t_change, change_s: lateral offset moves from d0 to d1 between t_change and
            t_change + change_s (smoothstep), metres / seconds (crossing pedestrians).
        dist_change, change_len: when ``change_len > 0`` the move is by distance travelled
            instead (lane changes): between ``dist_change`` and ``dist_change + change_len``
            metres from the start, so a stopped vehicle never moves sideways.
        yaw_offset: added to the road heading, rad (pi for oncoming, +-pi/2 for perpendicular).
        follow_motion: heading follows the direction of motion (movers) or stays fixed (parked).
        phase0: gait / pedalling phase offset, rad.
    """

    track_id: int
    cls: str
    model: str
    size: np.ndarray
    scale: np.ndarray
    color: np.ndarray
    s_t: np.ndarray
    d0: float
    d1: float = 0.0
    t_change: float = 1e9
    change_s: float = 3.0
    dist_change: float = 0.0
    change_len: float = 0.0
    yaw_offset: float = 0.0
    follow_motion: bool = True
    phase0: float = 0.0

    def d(self, t: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Lateral offset at times ``t`` (seconds) where the agent is at arc length ``s``, metres."""
        if self.change_len > 0:
            u = np.clip((np.abs(np.asarray(s) - self.s_t[0]) - self.dist_change) / self.change_len, 0.0, 1.0)
        else:
            u = np.clip((np.asarray(t) - self.t_change) / self.change_s, 0.0, 1.0)
        return self.d0 + (self.d1 - self.d0) * u * u * (3 - 2 * u)


@dataclass
class Scene:
    """A generated scenario: road, static scenery mesh (odom), ego and agents on a time grid."""

    cfg: WorldConfig
    road: Road
    scenery: M.Mesh
    t_grid: np.ndarray
    ego: Agent
    agents: list[Agent]
    light_dir: np.ndarray            # unit vector towards the sun, odom frame
    ambient: float
    sky_top: np.ndarray
    sky_horizon: np.ndarray

    def s_at(self, agent: Agent, t: np.ndarray) -> np.ndarray:
        """Arc length of ``agent`` along the road at times ``t`` (interpolated), metres."""
        return np.interp(t, self.t_grid, agent.s_t)

    def agent_pose_odom(self, agent: Agent, t: float) -> np.ndarray:
        """``T_odom_obj`` 4x4 (box centre, object frame x fwd/y left/z up) at time ``t``, float64."""
        x, y, yaw = self._planar(agent, t)
        T = np.eye(4)
        c, s = math.cos(yaw), math.sin(yaw)
        T[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
        T[:3, 3] = [x, y, agent.size[2] / 2]
        return T

    def _planar(self, agent: Agent, t: float) -> tuple[float, float, float]:
        eps = 0.05
        tt = np.array([t - eps, t, t + eps])
        s = self.s_at(agent, tt)
        d = agent.d(tt, s)
        x, y, h = self.road.pose(s, d)
        yaw = float(h[1]) + agent.yaw_offset
        if agent.follow_motion:
            ds = (s[2] - s[0]) / (2 * eps)
            dd = (d[2] - d[0]) / (2 * eps)
            direction = -1.0 if math.cos(agent.yaw_offset) < 0 else 1.0
            # Heading of the velocity in road coordinates; a floor on |ds| keeps it continuous
            # through stops (the agent keeps facing its lane direction).
            yaw = float(h[1]) + math.atan2(dd, direction * max(abs(ds), 0.5))
        return float(x[1]), float(y[1]), yaw

    def agent_velocity_odom(self, agent: Agent, t: float) -> np.ndarray:
        """Velocity of the box centre in odom, m/s (central difference over 10 ms)."""
        a = self.agent_pose_odom(agent, t - 0.005)[:3, 3]
        b = self.agent_pose_odom(agent, t + 0.005)[:3, 3]
        return (b - a) / 0.01

    def ego_pose_odom(self, t: float) -> np.ndarray:
        """``T_odom_base`` 4x4 with base_link on the road under the ego's centre."""
        T = self.agent_pose_odom(self.ego, t)
        T[2, 3] = 0.0
        return T

    def phase(self, agent: Agent, t: float) -> float:
        """Gait (pedestrian) or pedalling (cyclist) phase, rad, advancing with distance travelled."""
        s = float(self.s_at(agent, np.array([t]))[0])
        dist = abs(s - agent.s_t[0]) + abs(agent.d(np.array([t]), np.array([s]))[0] - agent.d0)
        stride = 1.4 if agent.cls == "pedestrian" else 2.2
        return agent.phase0 + 2 * math.pi * dist / stride


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass
class _PresetParams:
    lanes: int
    lane_width: float
    parking: float
    sidewalk: float
    ego_speed: tuple[float, float]
    stops: int
    traffic_gap: tuple[float, float]         # metres between moving cars in a lane
    traffic_speed: tuple[float, float]
    oncoming: bool
    parked_gap: tuple[float, float]          # metres between parked cars (0 = none)
    perpendicular_parking: bool
    pedestrians_per_100m: float
    crossing_per_100m: float
    cyclists_per_100m: float
    cut_in_prob: float
    radius: tuple[float, float]              # curve radius range, metres
    buildings: bool
    trees_per_100m: float
    stops_per_min: float = 0.0               # world v3: stops are a rate (v2: ``stops`` per sequence)


PRESET_PARAMS: dict[str, _PresetParams] = {
    "highway": _PresetParams(3, 3.7, 0.0, 0.0, (20.0, 30.0), 0, (30.0, 70.0), (18.0, 32.0), True,
                             (0, 0), False, 0.0, 0.0, 0.0, 0.25, (500.0, 1500.0), False, 6.0),
    "urban": _PresetParams(1, 3.4, 2.3, 3.0, (4.0, 13.0), 2, (25.0, 60.0), (6.0, 13.0), True,
                           (6.0, 18.0), False, 6.0, 1.5, 2.0, 0.1, (60.0, 250.0), True, 3.0),
    "parking_lot": _PresetParams(1, 3.2, 5.2, 1.5, (2.0, 5.0), 1, (40.0, 90.0), (2.0, 5.0), True,
                                 (2.7, 4.5), True, 5.0, 3.0, 0.5, 0.0, (80.0, 400.0), False, 1.0),
    "occlusion_stress": _PresetParams(2, 3.3, 2.3, 3.0, (2.0, 9.0), 2, (9.0, 20.0), (3.0, 10.0), True,
                                      (5.2, 8.0), False, 14.0, 3.0, 3.0, 0.3, (60.0, 250.0), True, 2.0),
    # The typical KITTI scene: one lane each way, parked cars on both sides, ego 6-12 m/s.
    "residential": _PresetParams(1, 3.1, 2.2, 2.0, (6.0, 12.0), 0, (40.0, 110.0), (5.0, 11.0), True,
                                 (5.3, 9.0), False, 3.0, 0.5, 1.0, 0.0, (80.0, 300.0), True, 5.0),
}
# Stops per minute of driving in world v3 (each: braking, 1.5-4 s standing, pulling away), so a
# preset's speed profile is its designed one whatever the sequence length.
STOPS_PER_MIN = {"highway": 0.0, "urban": 1.0, "parking_lot": 1.0, "occlusion_stress": 1.5, "residential": 0.5}

_PAINTS = np.array([
    [0.85, 0.85, 0.85], [0.1, 0.1, 0.1], [0.55, 0.57, 0.6], [0.6, 0.05, 0.05], [0.1, 0.2, 0.55],
    [0.9, 0.9, 0.92], [0.15, 0.3, 0.15], [0.8, 0.6, 0.1], [0.35, 0.2, 0.1], [0.3, 0.35, 0.45],
])


def _speed_profile(rng: np.random.Generator, t: np.ndarray, v_range: tuple[float, float], stops: int,
                   stops_per_min: float | None = None) -> np.ndarray:
    """Speed (m/s) on the time grid: piecewise-linear between random knots, with optional stops.

    ``stops`` stops per sequence (world v2), or, with ``stops_per_min``, a Poisson number of stops
    at that rate, each starting anywhere in (or just before) the sequence (world v3).
    """
    T = float(t[-1])
    n_knots = max(3, int(T / 4) + 2)
    kt = np.linspace(0, T, n_knots)
    kv = rng.uniform(*v_range, size=n_knots)
    v = np.interp(t, kt, kv)
    if stops_per_min is not None:
        ramp = 2.0
        for _ in range(int(rng.poisson(stops_per_min * (T + 2 * ramp + 4.0) / 60.0))):
            t0 = rng.uniform(-2 * ramp - 4.0, T)
            hold = rng.uniform(1.5, 4.0)
            v = v * np.clip(np.maximum((t0 - t) / ramp, (t - t0 - hold) / ramp), 0, 1)
        return v
    for _ in range(stops):
        if T < 10:  # a stop needs room: braking, standing and pulling away
            break
        t0 = rng.uniform(0.2 * T, 0.7 * T)
        hold = rng.uniform(1.5, 4.0)
        ramp = 2.0
        # Multiply by a window that goes to 0 (decelerate), holds, and comes back (accelerate).
        w = np.clip(np.maximum((t0 - t) / ramp, (t - t0 - hold) / ramp), 0, 1)
        v = v * w
    return v


def _follow(t: np.ndarray, members: list[tuple[Agent, np.ndarray, int]], lane_width: float,
            crossers: list[Agent] | None = None, dt_sim: float = 0.05) -> None:
    """Car following (IDM) of movers along the road.

    Car following (IDM) along the road: rewrites ``s_t`` of same-direction movers so nobody
    drives through the vehicle ahead in its lane (lane changers count in both lanes), and movers
    stop for crossing pedestrians that are in or next to their lane.

    Args:
        t: time grid, seconds.
        members: (agent, desired speed on the grid in m/s, direction +1/-1); ``agent.s_t[0]`` is
            the start position.
        lane_width: metres; two movers share a lane when their offsets differ by < 0.75 of it.
        crossers: agents at a fixed ``s`` whose lateral offset changes with time (pedestrians
            crossing), treated as standing obstacles while within 1.5 m of a mover's lane.
    """
    crossers = crossers or []
    for direction in (1, -1):
        group = [(a, v) for a, v, dr in members if dr == direction]
        if not group:
            continue
        ts = np.arange(0.0, t[-1] + dt_sim, dt_sim)
        x = np.array([direction * a.s_t[0] for a, _ in group])
        v = np.zeros(len(group))
        length = np.array([a.size[0] for a, _ in group])
        v0 = np.stack([np.interp(ts, t, vd) for _, vd in group], 1)
        dlat_t = np.stack([a.d(ts, np.zeros_like(ts)) for a, _ in group], 1)  # time-based ones
        x_start = x.copy()
        d0 = np.array([a.d0 for a, _ in group])
        d1 = np.array([a.d1 for a, _ in group])
        dist_c = np.array([a.dist_change for a, _ in group])
        len_c = np.array([max(a.change_len, 1e-9) for a, _ in group])
        by_dist = np.array([a.change_len > 0 for a, _ in group])
        v[:] = v0[0]
        xp = np.array([direction * c.s_t[0] for c in crossers])
        dp = np.stack([c.d(ts, np.zeros_like(ts)) for c in crossers], 1) if crossers else np.zeros((len(ts), 0))
        xs = np.empty((len(ts), len(group)))
        amax, bcomf = 1.5, 2.5
        for k in range(len(ts)):
            xs[k] = x
            u = np.clip((x - x_start - dist_c) / len_c, 0.0, 1.0)
            dlat = np.where(by_dist, d0 + (d1 - d0) * u * u * (3 - 2 * u), dlat_t[k])
            same = np.abs(dlat[:, None] - dlat[None, :]) < 0.75 * lane_width
            gap = x[None, :] - x[:, None] - (length[:, None] + length[None, :]) / 2
            ahead = same & (x[None, :] > x[:, None])
            gap = np.where(ahead, gap, np.inf)
            j = np.argmin(gap, axis=1)
            g = gap[np.arange(len(x)), j]
            dv = v - v[j]
            if len(xp):
                near = np.abs(dp[k][None, :] - dlat[:, None]) < 0.5 * lane_width + 1.5
                gp = np.where(near & (xp[None, :] > x[:, None]), xp[None, :] - x[:, None] - length[:, None] / 2 - 0.8, np.inf)
                gp = gp.min(axis=1)
                stop = gp < g
                g = np.where(stop, gp, g)
                dv = np.where(stop, v, dv)
            s_star = 2.0 + 1.5 * v + v * dv / (2 * np.sqrt(amax * bcomf))
            free = 1 - (v / np.maximum(v0[k], 0.1)) ** 4
            inter = np.where(np.isfinite(g), (np.maximum(s_star, 0) / np.maximum(g, 0.1)) ** 2, 0.0)
            acc = np.clip(amax * (free - inter), -9.0, amax)
            v = np.maximum(v + acc * dt_sim, 0.0)
            x = x + v * dt_sim
        for i, (a, _) in enumerate(group):
            a.s_t = direction * np.interp(t, ts, xs[:, i])


def _integrate(s0: float, v: np.ndarray, dt: float) -> np.ndarray:
    return s0 + np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * dt)])


def _road(rng: np.random.Generator, length: float, p: _PresetParams, s_start: float) -> Road:
    ds = 1.0
    s = np.arange(s_start, s_start + length + ds, ds)
    kappa = np.zeros_like(s)
    pos = s_start + rng.uniform(20, 60)
    while pos < s[-1]:
        seg = rng.uniform(40, 140)
        if rng.random() < 0.55:
            r = rng.uniform(*p.radius) * rng.choice([-1, 1])
            angle = min(seg / abs(r), rng.uniform(0.3, 1.4))
            seg = angle * abs(r)
            kappa[(s >= pos) & (s < pos + seg)] = 1.0 / r
        pos += seg + rng.uniform(30, 120)
    kappa[s < 0] = 0.0  # straight start, so the ego begins on a straight piece
    heading = np.concatenate([[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * ds)])
    heading -= np.interp(0.0, s, heading)
    x = np.concatenate([[0.0], np.cumsum(0.5 * (np.cos(heading[1:]) + np.cos(heading[:-1])) * ds)])
    y = np.concatenate([[0.0], np.cumsum(0.5 * (np.sin(heading[1:]) + np.sin(heading[:-1])) * ds)])
    x -= np.interp(0.0, s, x)
    y -= np.interp(0.0, s, y)
    return Road(s, x, y, heading, p.lane_width, p.lanes, p.parking, p.sidewalk)


def _strip(road: Road, d0: float, d1: float, z: float, color, s_lo: float | None = None, s_hi: float | None = None,
           step: int = 2) -> M.Mesh:
    """Flat quad strip between lateral offsets d0 < d1 at height z."""
    idx = np.arange(0, len(road.s), step)
    if s_lo is not None:
        idx = idx[(road.s[idx] >= s_lo) & (road.s[idx] <= s_hi)]
    if len(idx) < 2:
        idx = np.array([0, len(road.s) - 1])
    s = road.s[idx]
    xa, ya, _ = road.pose(s, np.full_like(s, d0))
    xb, yb, _ = road.pose(s, np.full_like(s, d1))
    A = np.stack([xa, ya, np.full_like(xa, z)], 1)
    B = np.stack([xb, yb, np.full_like(xb, z)], 1)
    tris = np.concatenate([
        np.stack([A[:-1], A[1:], B[1:]], 1), np.stack([A[:-1], B[1:], B[:-1]], 1)
    ]).reshape(-1, 3)
    n = len(tris)
    return M.Mesh(tris.astype(np.float32), np.tile(np.array([0, 0, 1], np.float32), (n, 1)),
                  np.zeros((n, 2), np.float32), np.tile(np.asarray(color, np.float32), (n, 1)))


def _place(mesh: M.Mesh, x: float, y: float, yaw: float, z: float = 0.0) -> M.Mesh:
    T = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    T[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    T[:3, 3] = [x, y, z]
    return M.transformed(mesh, T)


def _road_markings(road: Road, preset: str) -> list[M.Mesh]:
    """Lane markings: solid edge lines, dashed lane separators, the centre line and (parking lot) bay lines."""
    parts: list[M.Mesh] = []
    white, yellow = (0.92, 0.92, 0.9), (0.9, 0.75, 0.15)
    lw, n = road.lane_width, road.lanes
    for sgn in (-1, 1):
        e = sgn * n * lw
        parts.append(_strip(road, min(e, e - sgn * 0.15), max(e, e - sgn * 0.15), 0.01, white))
        for k in range(1, n):
            dk = sgn * k * lw
            for s0 in np.arange(road.s[0], road.s[-1] - 4, 12.0):
                parts.append(_strip(road, dk - 0.07, dk + 0.07, 0.01, white, s0, s0 + 4.0, step=1))
    if preset == "highway":
        parts.append(_strip(road, -0.3, 0.3, 0.01, yellow))
    else:
        for s0 in np.arange(road.s[0], road.s[-1] - 3, 9.0):
            parts.append(_strip(road, -0.07, 0.07, 0.01, white, s0, s0 + 3.0, step=1))
    if preset == "parking_lot":
        # Parking bay lines on both sides.
        for sgn in (-1, 1):
            for s0 in np.arange(road.s[0], road.s[-1], 2.9):
                x, y, h = road.pose(np.array([s0]), np.array([sgn * (n * lw + road.parking / 2)]))
                parts.append(_place(M.box_mesh((0.12, road.parking, 0.02), color=white), x[0], y[0], h[0]))
    return parts


def _buildings(rng: np.random.Generator, road: Road, outer: float) -> list[M.Mesh]:
    """Buildings on both sides, ``outer`` metres (lateral) from the centre line and beyond, with a window band per floor."""
    parts: list[M.Mesh] = []
    for sgn in (-1, 1):
        s0 = road.s[0]
        while s0 < road.s[-1]:
            length = rng.uniform(8, 25)
            depth = rng.uniform(8, 15)
            height = rng.uniform(5, 22)
            setback = rng.uniform(0.5, 4)
            d = sgn * (outer + setback + depth / 2)
            x, y, h = road.pose(np.array([s0 + length / 2]), np.array([d]))
            col = rng.uniform(0.35, 0.85, 3) * np.array([1.0, 0.95, 0.9])
            parts.append(_place(M.box_mesh((length, depth, height), (0, 0, height / 2), col), x[0], y[0], h[0]))
            # Windows: a darker band per floor on the facade facing the road.
            for fl in np.arange(2.5, height - 1.0, 3.2):
                parts.append(_place(M.box_mesh((length * 0.85, depth + 0.06, 1.2), (0, 0, fl + 0.6), col * 0.35), x[0], y[0], h[0]))
            s0 += length + rng.uniform(0.5, 6)
    return parts


def _trees_and_poles(rng: np.random.Generator, road: Road, p: _PresetParams, outer: float) -> list[M.Mesh]:
    """Trees (behind the sidewalk or in the open) and lamp poles along both road edges."""
    parts: list[M.Mesh] = []
    n_trees = int(p.trees_per_100m * (road.s[-1] - road.s[0]) / 100)
    trunk = M.cylinder_mesh(0.15, 2.5, 6, (0.35, 0.25, 0.15))
    for _ in range(n_trees):
        sgn = rng.choice([-1, 1])
        d = sgn * (outer + (rng.uniform(-0.9, -0.4) if p.buildings else rng.uniform(1.0, 12.0)))
        x, y, h = road.pose(np.array([rng.uniform(road.s[0], road.s[-1])]), np.array([d]))
        hgt = rng.uniform(4, 9)
        green = np.array([0.15, 0.35, 0.12]) * rng.uniform(0.7, 1.3)
        crown = M.cylinder_mesh(rng.uniform(1.2, 2.5), hgt - 2.0, 8, green, radius_top=0.0)
        parts.append(_place(trunk, x[0], y[0], 0.0, 0.0))
        parts.append(_place(crown, x[0], y[0], 0.0, 2.0))
    pole = M.cylinder_mesh(0.09, 7.0, 6, (0.5, 0.5, 0.52))
    for sgn in (-1, 1):
        for s0 in np.arange(road.s[0] + rng.uniform(0, 30), road.s[-1], rng.uniform(30, 50)):
            x, y, h = road.pose(np.array([s0]), np.array([sgn * (outer + 0.3)]))
            parts.append(_place(pole, x[0], y[0], 0.0))
            parts.append(_place(M.box_mesh((0.2, 1.6, 0.12), (0, -sgn * 0.8, 7.0), (0.5, 0.5, 0.52)), x[0], y[0], h[0]))
    return parts


def _scenery(rng: np.random.Generator, road: Road, p: _PresetParams, preset: str) -> M.Mesh:
    parts: list[M.Mesh] = []
    asphalt = np.array([0.33, 0.33, 0.35]) * rng.uniform(0.85, 1.15)
    grass = np.array([0.30, 0.42, 0.22]) * rng.uniform(0.8, 1.1)
    # Ground far around the road, slightly below it.
    parts.append(_strip(road, -400, 400, -0.02, grass, step=10))
    parts.append(_strip(road, -road.edge, road.edge, 0.0, asphalt))
    parts += _road_markings(road, preset)
    # Sidewalks (raised 15 cm) and kerbs.
    sidewalk = np.array([0.62, 0.6, 0.57]) * rng.uniform(0.9, 1.1)
    if p.sidewalk > 0:
        for sgn in (-1, 1):
            a, b = sgn * road.edge, sgn * (road.edge + p.sidewalk)
            parts.append(_strip(road, min(a, b), max(a, b), 0.15, sidewalk))
            kerb = _strip(road, min(a, a + sgn * 0.01), max(a, a + sgn * 0.01), 0.15, sidewalk)
            parts.append(kerb)
    # Barrier on the highway median, guard posts.
    if preset == "highway":
        for s0 in np.arange(road.s[0], road.s[-1] - 6, 6.0):
            x, y, h = road.pose(np.array([s0 + 3]), np.array([0.0]))
            parts.append(_place(M.box_mesh((6.0, 0.4, 0.8), (0, 0, 0.4), (0.7, 0.7, 0.68)), x[0], y[0], h[0]))
    outer = road.edge + p.sidewalk
    if p.buildings:  # behind the sidewalk
        parts += _buildings(rng, road, outer)
    parts += _trees_and_poles(rng, road, p, outer)
    # Reverse: objects above the road first, then markings, asphalt, ground, so that the depth
    # test rejects hidden layers before shading (the renderer draws in buffer order).
    return M.merge(parts[::-1])


# World v3 paints: the v2 ten plus common car colours (silver, greys, blues, reds, beige, white).
_PAINTS_V3 = np.concatenate([_PAINTS, np.array([
    [0.72, 0.74, 0.76], [0.4, 0.42, 0.45], [0.05, 0.12, 0.3], [0.25, 0.45, 0.7], [0.45, 0.03, 0.06],
    [0.75, 0.68, 0.55], [0.95, 0.95, 0.95], [0.2, 0.2, 0.22], [0.9, 0.35, 0.05], [0.55, 0.6, 0.2],
])])


def _car_look_v3(rng: np.random.Generator, pool: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Model from the config's pool, scaled to its real car's length (+-4 %, per-axis +-3 %), a paint."""
    models = M.CAR_POOLS[pool]
    model = models[int(rng.integers(len(models)))]
    lo, hi = M.load_car(model).bounds()
    ext = (hi - lo).astype(np.float64)
    scale = M.real_length_m(model) / ext[0] * rng.uniform(0.96, 1.04) * rng.uniform(0.97, 1.03, 3)
    color = _PAINTS_V3[int(rng.integers(len(_PAINTS_V3)))] * rng.uniform(0.85, 1.1)
    return model, ext * scale, scale, np.clip(color, 0, 1)


def _car_look(rng: np.random.Generator, allow_box: bool = False) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    model = M.CAR_MODELS[int(rng.integers(len(M.CAR_MODELS)))]
    base = M.load_car(model)
    lo, hi = base.bounds()
    scale = np.array([rng.uniform(*r) for r in CAR_SIZE_RANGE])
    size = (hi - lo).astype(np.float64) * scale
    color = _PAINTS[int(rng.integers(len(_PAINTS)))] * rng.uniform(0.85, 1.1)
    return model, size, scale, np.clip(color, 0, 1)


CarLook = Callable[[np.random.Generator], tuple[str, np.ndarray, np.ndarray, np.ndarray]]


def _moving_cars(rng: np.random.Generator, t: np.ndarray, dt: float, p: _PresetParams, span: tuple[float, float],
                 ego_d: float, rate: float | None, car_look: CarLook, agents: list[Agent],
                 movers: list[tuple[Agent, np.ndarray, int]]) -> None:
    """Add moving cars in every lane (both directions with oncoming traffic) to ``agents`` and ``movers``.

    Args:
        span: ``(lo, hi)`` arc length range they start in, metres.
        ego_d: the ego's lateral offset (no car starts on top of it).
        rate: world v3 stops per minute of the preset (traffic stops at half of it); None: world v2 stops.
    """
    lo, hi = span
    for direction in ((1, -1) if p.oncoming else (1,)):
        for lane in range(p.lanes):
            d = -direction * (lane + 0.5) * p.lane_width
            pos = lo + rng.uniform(0, p.traffic_gap[1])
            while pos < hi:
                if not (direction > 0 and abs(d - ego_d) < 0.1 and abs(pos) < 12):
                    model, size, scale, color = car_look(rng)
                    if rate is not None:  # world v3
                        v = _speed_profile(rng, t, p.traffic_speed, 0, 0.5 * rate)
                    else:
                        v = _speed_profile(rng, t, p.traffic_speed, 1 if (p.stops and rng.random() < 0.3) else 0)
                    a = Agent(len(agents) + 1, "car", model, size, scale, color, np.full_like(t, pos), d,
                              yaw_offset=0.0 if direction > 0 else math.pi, phase0=0.0)
                    movers.append((a, v, direction))
                    if p.lanes > 1 and rng.random() < p.cut_in_prob:
                        k2 = lane + 1 if lane == 0 else (lane - 1 if lane == p.lanes - 1 else lane + int(rng.choice([-1, 1])))
                        a.d1 = -direction * (k2 + 0.5) * p.lane_width
                        a.dist_change = rng.uniform(0.0, 0.7) * float(_integrate(0.0, v, dt)[-1])
                        a.change_len = rng.uniform(20.0, 45.0)
                    agents.append(a)
                pos += rng.uniform(*p.traffic_gap) + 5


def _parked_cars(rng: np.random.Generator, t: np.ndarray, p: _PresetParams, span: tuple[float, float],
                 car_look: CarLook, agents: list[Agent]) -> None:
    """Add parked cars (parallel or perpendicular) on both sides, arc length in ``span`` (metres), to ``agents``."""
    lo, hi = span
    for sgn in (-1, 1):
        pos = lo + rng.uniform(0, 5)
        while pos < hi:
            if rng.random() < (0.85 if p.perpendicular_parking else 0.75):
                model, size, scale, color = car_look(rng)
                if p.perpendicular_parking:
                    d = sgn * (p.lanes * p.lane_width + p.parking / 2 + rng.uniform(-0.2, 0.2))
                    yaw = sgn * math.pi / 2 + (math.pi if rng.random() < 0.5 else 0.0) + rng.uniform(-0.06, 0.06)
                else:
                    d = sgn * (p.lanes * p.lane_width + p.parking / 2 + rng.uniform(-0.15, 0.1))
                    yaw = (0.0 if sgn < 0 else math.pi) + rng.uniform(-0.05, 0.05)
                agents.append(Agent(len(agents) + 1, "car", model, size, scale, color, np.full_like(t, pos), d,
                                    yaw_offset=yaw, follow_motion=False))
            pos += rng.uniform(*p.parked_gap) if not p.perpendicular_parking else p.parked_gap[0]


def _drop_overlapping(movers: list[tuple[Agent, np.ndarray, int]], agents: list[Agent],
                      lane_width: float) -> tuple[list[tuple[Agent, np.ndarray, int]], list[Agent]]:
    """Drop the movers that start overlapping an earlier one in their lane; the movers and agents kept."""
    kept: list[tuple[Agent, np.ndarray, int]] = []
    for m in movers:
        a = m[0]
        clash = any(
            k[2] == m[2] and abs(k[0].d0 - a.d0) < 0.75 * lane_width
            and abs(k[0].s_t[0] - a.s_t[0]) < (k[0].size[0] + a.size[0]) / 2 + 2.0
            for k in kept
        )
        if clash:
            agents = [x for x in agents if x is not a]
        else:
            kept.append(m)
    return kept, agents


def generate(cfg: WorldConfig) -> Scene:
    """Generate the scenario of ``cfg`` (road, scenery, ego and agents); deterministic in ``cfg.seed``.

    Raises:
        WorldConfigError: invalid configuration.  MeshError: car meshes missing.
    """
    cfg.validate()
    v3 = cfg.world_version != "v2"
    M.check_meshes(M.CAR_POOLS[cfg.car_pool] if v3 else M.CAR_MODELS)
    p = PRESET_PARAMS[cfg.preset]
    rng = np.random.default_rng([cfg.seed, PRESETS_INDEX[cfg.preset]])
    duration = (cfg.n_frames - 1) / cfg.rate_hz
    dt = 0.01
    t = np.arange(0.0, duration + 1.0 + dt, dt)
    rate = STOPS_PER_MIN[cfg.preset] if v3 else None
    v_ego = _speed_profile(rng, t, p.ego_speed, p.stops, rate)

    def car_look(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
        return _car_look_v3(rng, cfg.car_pool) if v3 else _car_look(rng)

    ego_d = -(rng.integers(p.lanes) + 0.5) * p.lane_width
    s_ego = _integrate(0.0, v_ego, dt)
    travel = float(s_ego[-1])
    lo, hi = -120.0, travel + 250.0
    road = _road(rng, hi - lo, p, lo)
    ego = Agent(0, "car", "ego", np.array([4.5, 1.8, 1.5]), np.ones(3), np.ones(3), s_ego, ego_d)
    movers: list[tuple[Agent, np.ndarray, int]] = [(ego, v_ego, 1)]
    if p.lanes > 1 and rng.random() < 0.5 and s_ego[-1] > 40:
        ego.d1 = ego_d + p.lane_width * (1 if ego_d < -p.lane_width else -1)
        ego.dist_change = rng.uniform(0.1, 0.6) * float(s_ego[-1])
        ego.change_len = rng.uniform(25.0, 50.0)

    agents: list[Agent] = []

    def new_id() -> int:
        return len(agents) + 1

    _moving_cars(rng, t, dt, p, (lo, hi), ego_d, rate, car_look, agents, movers)
    if p.parked_gap[1] > 0:
        _parked_cars(rng, t, p, (lo, hi), car_look, agents)
    span = hi - lo
    # Pedestrians walking along sidewalks (or between parked rows).
    walk_d = p.lanes * p.lane_width + p.parking + max(p.sidewalk, 1.0) / 2
    for _ in range(int(p.pedestrians_per_100m * span / 100)):
        sgn = rng.choice([-1, 1])
        direction = rng.choice([-1, 1])
        v = _speed_profile(rng, t, (0.8, 1.7), 0) if rng.random() < 0.85 else np.zeros_like(t)
        s0 = rng.uniform(lo, hi)
        d = sgn * (walk_d + rng.uniform(-0.5, 0.5) * max(p.sidewalk - 1.0, 0.3))
        agents.append(Agent(new_id(), "pedestrian", "pedestrian", PED_SIZE * rng.uniform(0.9, 1.08), np.ones(3),
                            rng.uniform(0.05, 0.9, 3), _integrate(s0, direction * v, dt), d,
                            yaw_offset=0.0 if direction > 0 else math.pi, phase0=rng.uniform(0, 2 * math.pi)))
    # Pedestrians crossing the road (traffic stops for them, see _follow).
    crossers: list[Agent] = []
    for _ in range(int(p.crossing_per_100m * span / 100)):
        sgn = rng.choice([-1, 1])
        speed = rng.uniform(0.9, 1.6)
        s0 = rng.uniform(lo, hi)
        d0 = sgn * walk_d
        t_start = rng.uniform(0, max(duration, 1.0))
        crossing = 2 * walk_d / speed
        a = Agent(new_id(), "pedestrian", "pedestrian", PED_SIZE * rng.uniform(0.9, 1.08), np.ones(3),
                  rng.uniform(0.05, 0.9, 3), np.full_like(t, s0), d0, d1=-d0, t_change=t_start, change_s=crossing * 1.5,
                  yaw_offset=-sgn * math.pi / 2, follow_motion=False, phase0=rng.uniform(0, 2 * math.pi))
        agents.append(a)
        crossers.append(a)
    # Cyclists near the right edge of the outer lanes.
    for _ in range(int(p.cyclists_per_100m * span / 100)):
        direction = rng.choice([-1, 1])
        d = -direction * (p.lanes * p.lane_width - 0.8)
        v = _speed_profile(rng, t, (3.0, 7.0), 0)
        agents.append(Agent(new_id(), "cyclist", "cyclist", CYC_SIZE * rng.uniform(0.95, 1.05), np.ones(3),
                            rng.uniform(0.05, 0.9, 3), np.full_like(t, rng.uniform(lo, hi)), d,
                            yaw_offset=0.0 if direction > 0 else math.pi, phase0=rng.uniform(0, 2 * math.pi)))
        movers.append((agents[-1], v, direction))
    # Drop movers that start overlapping another mover in their lane, then simulate following.
    kept, agents = _drop_overlapping(movers, agents, p.lane_width)
    _follow(t, kept, p.lane_width, crossers)
    sun_az, sun_el = rng.uniform(0, 2 * math.pi), rng.uniform(0.25, 1.2)
    light = np.array([math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az), math.sin(sun_el)])
    sky_top = np.array([0.35, 0.55, 0.85]) * rng.uniform(0.8, 1.1)
    sky_hor = np.array([0.75, 0.82, 0.9]) * rng.uniform(0.85, 1.05)
    return Scene(cfg, road, _scenery(rng, road, p, cfg.preset), t, ego, agents, light, float(rng.uniform(0.35, 0.55)),
                 np.clip(sky_top, 0, 1), np.clip(sky_hor, 0, 1))


PRESETS_INDEX = {"highway": 1, "urban": 2, "parking_lot": 3, "occlusion_stress": 4, "residential": 5}


# ---------------------------------------------------------------------------------------------
# Articulated primitives: parts as (T_obj_part 4x4, part size (l, w, h), colour, rigid?)


def _part(x: float, y: float, z: float, size, color, pitch: float = 0.0, pivot_top: bool = False, rigid: bool = True):
    """Box part centred at (x, y, z) (or hanging from it when ``pivot_top``), pitched about y."""
    T = np.eye(4)
    c, s = math.cos(pitch), math.sin(pitch)
    T[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    off = np.array([0.0, 0.0, -size[2] / 2]) if pivot_top else np.zeros(3)
    T[:3, 3] = np.array([x, y, z]) + T[:3, :3] @ off
    return T, np.asarray(size, np.float64), np.asarray(color, np.float64), rigid


def pedestrian_parts(size: np.ndarray, color: np.ndarray, phase: float) -> list:
    """Boxes of a walking pedestrian in its object frame (box centre origin), scaled to ``size``."""
    l, w, h = size
    z0 = -h / 2
    leg = 0.48 * h
    swing = 0.45 * math.sin(phase)
    skin, pants = np.array([0.8, 0.62, 0.5]), np.array([0.15, 0.15, 0.25])
    hip = z0 + leg
    return [
        _part(0, 0, hip + 0.19 * h, (0.22 * l / 0.8, 0.42 * w / 0.6, 0.36 * h), color),              # torso
        _part(0, 0, hip + 0.37 * h + 0.07, (0.2, 0.17, 0.13 * h), skin),                               # head
        _part(0, 0.1 * w / 0.6, hip, (0.14, 0.14, leg), pants, swing, True, False),                    # legs
        _part(0, -0.1 * w / 0.6, hip, (0.14, 0.14, leg), pants, -swing, True, False),
        _part(0, 0.25 * w / 0.6, hip + 0.36 * h, (0.1, 0.09, 0.34 * h), color * 0.8, -0.7 * swing, True, False),  # arms
        _part(0, -0.25 * w / 0.6, hip + 0.36 * h, (0.1, 0.09, 0.34 * h), color * 0.8, 0.7 * swing, True, False),
    ]


def cyclist_parts(size: np.ndarray, color: np.ndarray, phase: float) -> list:
    """Boxes of a cyclist (bicycle + rider) in its object frame, scaled to ``size``."""
    l, w, h = size
    z0 = -h / 2
    r = 0.34 * l / 1.76
    wheel_x = l / 2 - r
    frame_col, tyre = np.array([0.7, 0.1, 0.1]), np.array([0.08, 0.08, 0.08])
    sz = h / 1.73
    parts = [
        _part(wheel_x, 0, z0 + r, (2 * r, 0.05, 2 * r), tyre),                        # wheels (square discs)
        _part(-wheel_x, 0, z0 + r, (2 * r, 0.05, 2 * r), tyre),
        _part(0, 0, z0 + r + 0.25 * sz, (2 * wheel_x * 0.8, 0.05, 0.06), frame_col),
        _part(0.05, 0, z0 + r + 0.15 * sz, (0.06, 0.05, 0.45 * sz), frame_col, -0.3),
        _part(wheel_x - 0.05, 0, z0 + r + 0.3 * sz, (0.06, 0.05, 0.6 * sz), frame_col, 0.35),
        _part(wheel_x - 0.15, 0, z0 + r + 0.62 * sz, (0.06, w, 0.04), tyre),             # handlebar
        _part(-0.1, 0, z0 + 1.12 * sz, (0.26, 0.36, 0.55 * sz), color, 0.6),             # torso
        _part(0.12, 0, z0 + 1.53 * sz, (0.2, 0.17, 0.2 * sz), np.array([0.8, 0.62, 0.5])),  # head
    ]
    for side, ph in ((1, phase), (-1, phase + math.pi)):
        parts.append(_part(-0.2, side * 0.12, z0 + 0.88 * sz, (0.12, 0.12, 0.5 * sz), color * 0.5,
                           0.5 * math.sin(ph) - 0.3, True, False))
    return parts


def constructed_scene(cfg: WorldConfig, placements: list[dict], ground: bool = True) -> Scene:
    """A hand-built scene for tests and demos: straight road along odom +x, ego parked at the origin.

    Args:
        cfg: world configuration (size, intrinsics, rate, camera mounting).
        placements: one dict per object with keys ``x`` (metres ahead of base_link), ``y``
            (metres to the left), optional ``yaw`` (rad about +z, 0 = facing +x), ``cls``
            ('car'), ``model`` ('box' or a car model name), ``size`` (l, w, h) for boxes,
            ``speed`` (m/s along +x), ``color``.
        ground: draw a grey ground plane (False: only sky behind the objects).

    Returns:
        A :class:`Scene` whose agents have track ids 1..N in the order given.
    """
    dt = 0.01
    t = np.arange(0.0, (cfg.n_frames - 1) / cfg.rate_hz + 1.0 + dt, dt)
    s = np.arange(-100.0, 1001.0, 1.0)
    road = Road(s, s.copy(), np.zeros_like(s), np.zeros_like(s), 3.5, 1, 0.0, 0.0)
    scenery = _strip(road, -200, 200, 0.0, (0.4, 0.4, 0.4), step=50) if ground else M.box_mesh((0.01, 0.01, 0.01), (0, 0, -50))
    ego = Agent(0, "car", "ego", np.array([4.5, 1.8, 1.5]), np.ones(3), np.ones(3), np.zeros_like(t), 0.0)
    agents = []
    for i, p in enumerate(placements):
        model = p.get("model", "box")
        if model == "box":
            size, scale = np.asarray(p["size"], np.float64), np.ones(3)
        else:
            lo, hi = M.load_car(model).bounds()
            scale = np.asarray(p.get("scale", (1.0, 1.0, 1.0)), np.float64)
            size = (hi - lo).astype(np.float64) * scale
        agents.append(Agent(i + 1, p.get("cls", "car"), model, size, scale, np.asarray(p.get("color", (0.8, 0.2, 0.2))),
                            float(p["x"]) + float(p.get("speed", 0.0)) * t, float(p["y"]),
                            yaw_offset=float(p.get("yaw", 0.0)), follow_motion=False))
    return Scene(cfg, road, scenery, t, ego, agents, np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93]),
                 0.5, np.array([0.4, 0.6, 0.9]), np.array([0.8, 0.85, 0.9]))
