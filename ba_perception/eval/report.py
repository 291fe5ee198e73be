"""The replay report: one printed screen, ``report.md`` and the plots a person would rather look at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}" if pct else (f"{v:.2f}" if isinstance(v, float) else str(v))


def _change(reduction: Any) -> str:
    """``reduction`` (fraction, positive = lower) as "x.y% lower" / "x.y% higher"."""
    if reduction is None or (isinstance(reduction, float) and math.isnan(reduction)):
        return "n/a"
    return f"{_fmt(abs(reduction), True)}% {'lower' if reduction >= 0 else 'higher'}"


def summary_lines(s: dict) -> list[str]:
    """The one-screen summary as text lines."""
    lines = [f"run: {s.get('run', {}).get('mode', '?')} over {s.get('run', {}).get('bag', '?')} "
             f"({s.get('run', {}).get('wall_s', '?')} s wall)"]
    fr = s.get("frames", {})
    lines.append(f"frames: input {fr.get('input')}, observations {fr.get('observations')}, "
                 f"refined {fr.get('detections')}, tracks {fr.get('tracks')}, dropped {s.get('dropped_frames', 'n/a')}")
    lat = s.get("latency", {}).get("stages", [])
    if lat:
        lines.append("")
        lines.append(f"{'latency (ms)':28s} {'n':>6s} {'p50':>8s} {'p95':>8s} {'p99':>8s}")
        for r in lat:
            if r["stage"].endswith(".queue") and r["p99_ms"] < 0.5:
                continue
            lines.append(f"{r['stage']:28s} {r['count']:6d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f}")
    det = s.get("detection", {}).get("classes", {})
    if det:
        lines.append("")
        lines.append("detection (single frame, AP|R40 moderate, %):")
        for cls, m in det.items():
            aps = "  ".join(f"{k}={_fmt(v)}" for k, v in m.items() if k.startswith("ap"))  # already percent
            e = m.get("errors", {})
            lines.append(f"  {cls:10s} n_gt={m['num_gt']:<5d} {aps}  depth rel median={_fmt(e.get('depth_rel_median'), True)}%")
    d = s.get("depth_ba")
    if d:
        lines.append("")
        lines.append(f"depth error, cars seen in >= {d['min_frames']} frames ({d['objects']} boxes): single-frame median "
                     f"{_fmt(d.get('single_abs_median_m'))} m -> after object BA {_fmt(d.get('refined_abs_median_m'))} m "
                     f"({_change(d.get('reduction'))})")
    for key, name in (("mot_3d", "tracking, 3D (centre distance)"), ("mot_2d", "tracking, 2D (IoU)")):
        m = s.get(key)
        if m:
            lines.append("")
            lines.append(f"{name}: {'class':10s} {'HOTA':>6s} {'DetA':>6s} {'AssA':>6s} {'MOTA':>6s} {'IDF1':>6s} {'IDSW':>5s}")
            for cls, r in m.items():
                lines.append(f"{'':{len(name) + 2}s}{cls:10s} {_fmt(r['HOTA'], True):>6s} {_fmt(r['DetA'], True):>6s} "
                             f"{_fmt(r['AssA'], True):>6s} {_fmt(r['MOTA'], True):>6s} {_fmt(r['IDF1'], True):>6s} "
                             f"{int(r['IDSW']):5d}")
    return lines


def print_summary(s: dict, out: Path) -> None:
    """Print the summary lines and where the report and outputs are."""
    print("\n" + "\n".join(summary_lines(s)))
    print(f"\nreport: {out / 'report.md'}   outputs: {out / 'outputs'}")


def _plots(out: Path, s: dict, bag: Path, outputs: dict) -> list[tuple[str, str]]:
    """Write the report's figures under ``out``; ``(file name, caption)`` of each one made."""
    import matplotlib

    matplotlib.use("Agg")  # before the helpers import pyplot

    from ba_perception.data.bag import read_bag

    frames = list(read_bag(bag, images=True))
    tracks = outputs.get("/ba_perception/tracks", {})
    return _plot_bev(out, frames, tracks) + _plot_overlays(out, frames, tracks) + _plot_latency(out, s) + _plot_depth(out, s)


def _plot_bev(out: Path, frames: list, tracks: dict) -> list[tuple[str, str]]:
    """Bird's-eye view of ground-truth and tracked trajectories."""
    import matplotlib.pyplot as plt

    from ba_perception.core.overlay import id_color

    made = []
    fig, ax = plt.subplots(figsize=(8, 8))
    gt_paths: dict[int, list] = {}
    ego = []
    for f in frames:
        ego.append(f.T_odom_base[:2, 3])
        for tid, c in zip(f.objects.track_id, np.asarray(f.objects.center_odom).reshape(-1, 3)):
            gt_paths.setdefault(int(tid), []).append(c[:2])
    for path in gt_paths.values():
        xy = np.array(path)
        ax.plot(xy[:, 0], xy[:, 1], color="0.7", lw=3, alpha=0.7)
    tr_paths: dict[int, list] = {}
    for m in tracks.values():
        for t in m.tracks:
            tr_paths.setdefault(t.track_id, []).append((t.pose.position.x, t.pose.position.y))
    for tid, path in tr_paths.items():
        xy = np.array(path)
        ax.plot(xy[:, 0], xy[:, 1], color=id_color(tid), lw=1.2)
        ax.annotate(str(tid), xy[-1], fontsize=7, color=id_color(tid))
    e = np.array(ego)
    if len(e):
        ax.plot(e[:, 0], e[:, 1], "k--", lw=1, label="ego")
    ax.set_aspect("equal")
    ax.set_xlabel("odom x (m)")
    ax.set_ylabel("odom y (m)")
    ax.set_title("Bird's-eye view: ground truth (grey) vs tracks (coloured by id)")
    fig.savefig(out / "bev.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    made.append(("bev.png", "Bird's-eye view of ground-truth and tracked trajectories"))
    return made


def _plot_overlays(out: Path, frames: list, tracks: dict) -> list[tuple[str, str]]:
    """A few frames with the tracks' 3D boxes projected."""
    import matplotlib.pyplot as plt
    import torch

    from ba_perception.core import geometry
    from ba_perception.core.overlay import draw_boxes
    from ba_perception.nodes.visualizer_node import boxes_of
    from ba_perception.ros.convert import pose_to_matrix

    made = []
    picks = [f for f in frames if f.stamp_ns in tracks][:: max(1, len(frames) // 4)][:4]
    if picks:
        fig, axes = plt.subplots(len(picks), 1, figsize=(12, 3.2 * len(picks)))
        for ax, f in zip(np.atleast_1d(axes), picks):
            msg = tracks[f.stamp_ns]
            poses, sizes, ids, labels, _ = boxes_of(msg)
            img = f.image
            if len(ids) and img is not None:
                T = np.linalg.inv(pose_to_matrix(msg.camera_pose)) @ poses
                Tt = torch.as_tensor(T)
                corners = geometry.box_corners(Tt[:, :3, :3], Tt[:, :3, 3], torch.as_tensor(sizes)).numpy()
                img = draw_boxes(img, corners, f.K, ids, [f"{i} {c}" for i, c in zip(ids, labels)])
            ax.imshow(img)
            ax.set_axis_off()
            ax.set_title(f"frame {f.index}: {len(ids)} tracks", fontsize=9)
        fig.savefig(out / "overlays.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        made.append(("overlays.png", "Frames with the tracks' 3D boxes projected, coloured by id"))
    return made


def _plot_latency(out: Path, s: dict) -> list[tuple[str, str]]:
    """Latency histogram per stage."""
    import matplotlib.pyplot as plt

    made = []
    samples = s.get("latency", {}).get("samples_ms", {})
    stages = [k for k in samples if not k.endswith(".queue") and samples[k]]
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.8))
        for ax, k in zip(np.atleast_1d(axes), stages):
            ax.hist(samples[k], bins=30, color="tab:blue")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("ms")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=100)
        plt.close(fig)
        made.append(("latency.png", "Latency per stage (histograms)"))
    return made


def _plot_depth(out: Path, s: dict) -> list[tuple[str, str]]:
    """Depth error by range, before / after object BA."""
    import matplotlib.pyplot as plt

    made = []
    d = s.get("depth_ba", {})
    if d.get("samples"):
        a = np.array(d["samples"])
        edges = np.arange(0, max(10.0, a[:, 0].max()) + 10, 10)
        mids, e1, e2 = [], [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (a[:, 0] >= lo) & (a[:, 0] < hi)
            if m.sum() >= 3:
                mids.append((lo + hi) / 2)
                e1.append(np.median(np.abs(a[m, 1] - a[m, 0])))
                e2.append(np.median(np.abs(a[m, 2] - a[m, 0])))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(mids, e1, "o-", label="single frame")
        ax.plot(mids, e2, "s-", label="after object BA")
        ax.set_xlabel("ground-truth depth (m)")
        ax.set_ylabel("median |depth error| (m)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.savefig(out / "depth_by_range.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(("depth_by_range.png", "Median depth error by range, before and after object BA"))
    return made


def write_report(out: Path, s: dict, bag: Path, outputs: dict, plots: bool = True) -> Path:
    """Write ``report.md`` (+ PNGs) into ``out``."""
    made = _plots(out, s, bag, outputs) if plots and s.get("frames", {}).get("input") else []
    text = ["# ba_perception replay report", "", "```", *summary_lines(s), "```", ""]
    for name, caption in made:
        text += [f"## {caption}", "", f"![{caption}]({name})", ""]
    text += ["Raw numbers: `summary.json`; recorded outputs (MCAP): `outputs/`."]
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path
