"""Statistics of generated scenes without rendering: ego travel per window, object ranges and states."""

from __future__ import annotations

import math

import numpy as np

from ba_perception.data.world.config import WorldConfig

WINDOW_FRAMES = 8
RANGE_BINS_M = (0.0, 20.0, 40.0, 60.0, 100.0)
MOVING_MPS = 0.3  # an object faster than this at a frame counts as moving there


def _quantiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"n": 0}
    return {"n": int(len(x)), "median": float(np.median(x)), "p10": float(np.percentile(x, 10)),
            "p90": float(np.percentile(x, 90))}


def sequence_stats(cfg: WorldConfig, window: int = WINDOW_FRAMES) -> dict:
    """Ego travel per ``window``-frame window, objects in view by range and state, of one sequence.

    States per object per frame: moving (faster than :data:`MOVING_MPS`), parked (never moves in
    the sequence) or standing (a mover that is stopped at that frame).

    An object is in view at a frame when its box centre is in front of the camera, projects
    inside the image (widened by half its size) and lies within ``cfg.gt_max_range_m``; occlusion
    is ignored (no rendering).

    Returns:
        ``travel_m`` (per-window ego path lengths, metres), ``ranges_m`` and ``moving`` (one entry
        per object in view per frame), ``total_travel_m``.
    """
    from ba_perception.data.world.scene import generate
    from ba_perception.data.world.sequence import base_to_camera

    sc = generate(cfg)
    times = np.arange(cfg.n_frames) / cfg.rate_hz
    s_ego = np.interp(times, sc.t_grid, sc.ego.s_t)
    travel = np.abs(s_ego[window - 1:] - s_ego[: len(s_ego) - window + 1]) if len(s_ego) >= window else np.zeros(0)
    K = cfg.intrinsics()
    T_base_cam = base_to_camera(cfg)
    ranges, moving, parked = [], [], []
    t_end = float(sc.t_grid[-1])
    never_moves = {a.track_id: bool(np.ptp(a.s_t) < 1e-6 and (a.d0 == a.d1 or (a.change_len <= 0 and a.t_change >= t_end)))
                   for a in sc.agents}
    for t in times:
        T_odom_cam = sc.ego_pose_odom(float(t)) @ T_base_cam
        R, p = T_odom_cam[:3, :3], T_odom_cam[:3, 3]
        for a in sc.agents:
            c = sc.agent_pose_odom(a, float(t))[:3, 3]
            x = R.T @ (c - p)
            rng_m = float(np.linalg.norm(x))
            if x[2] < 0.5 or rng_m > cfg.gt_max_range_m:
                continue
            margin = K[0, 0] * float(np.linalg.norm(a.size)) / 2 / x[2]
            u, v = K[0, 0] * x[0] / x[2] + K[0, 2], K[1, 1] * x[1] / x[2] + K[1, 2]
            if not (-margin <= u <= cfg.width - 1 + margin and -margin <= v <= cfg.height - 1 + margin):
                continue
            ranges.append(rng_m)
            moving.append(float(np.linalg.norm(sc.agent_velocity_odom(a, float(t))[:2])) > MOVING_MPS)
            parked.append(never_moves[a.track_id])
    return {"travel_m": travel, "ranges_m": np.array(ranges), "moving": np.array(moving, bool),
            "parked": np.array(parked, bool),
            "total_travel_m": float(abs(s_ego[-1] - s_ego[0]))}


def split_stats(configs: list[WorldConfig], window: int = WINDOW_FRAMES) -> dict:
    """Aggregate :func:`sequence_stats` over a split, overall and per preset (JSON-ready)."""
    per: dict[str, list[dict]] = {}
    for cfg in configs:
        per.setdefault("all", []).append(sequence_stats(cfg, window))
        per.setdefault(cfg.preset, []).append(per["all"][-1])
    out = {}
    for key, seqs in per.items():
        travel = np.concatenate([s["travel_m"] for s in seqs])
        ranges = np.concatenate([s["ranges_m"] for s in seqs])
        moving = np.concatenate([s["moving"] for s in seqs])
        parked = np.concatenate([s["parked"] for s in seqs])
        hist, _ = np.histogram(ranges, bins=RANGE_BINS_M)
        out[key] = {
            "sequences": len(seqs),
            "travel_per_window_m": {**_quantiles(travel), "share_below_2m": float((travel < 2.0).mean()) if len(travel) else math.nan},
            "sequence_travel_m": _quantiles(np.array([s["total_travel_m"] for s in seqs])),
            "object_range_m": {**_quantiles(ranges), **{f"{lo:g}-{hi:g}": int(n) for lo, hi, n in
                                                       zip(RANGE_BINS_M[:-1], RANGE_BINS_M[1:], hist)}},
            "objects_moving_share": float(moving.mean()) if len(moving) else math.nan,
            "objects_moving": int(moving.sum()), "objects_parked": int(parked.sum()),
            "objects_standing": int((~moving & ~parked).sum()),
        }
    return out


def stats_rows(stats: dict, window: int = WINDOW_FRAMES) -> list[str]:
    """Printable lines of :func:`split_stats`."""
    lines = [f"{'preset':<17}{'seqs':>5}  ego travel per {window}-frame window (m): median  p10  p90  <2 m"
             f"   seq travel median (m)   objects in view by range (m) 0-20/20-40/40-60/60-100   moving/parked/standing"]
    for key, s in stats.items():
        t, r = s["travel_per_window_m"], s["object_range_m"]
        if not t.get("n"):
            continue
        bins = "/".join(str(r.get(f"{lo:g}-{hi:g}", 0)) for lo, hi in zip(RANGE_BINS_M[:-1], RANGE_BINS_M[1:]))
        lines.append(f"{key:<17}{s['sequences']:>5}  {t['median']:6.1f} {t['p10']:5.1f} {t['p90']:5.1f} "
                     f"{100 * t['share_below_2m']:4.0f} %   {s['sequence_travel_m']['median']:8.1f}"
                     f"   {bins:>30}   {s['objects_moving']}/{s['objects_parked']}/{s['objects_standing']}")
    return lines
