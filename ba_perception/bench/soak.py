"""`ba-perception bench soak`: the node graph at a fixed rate for minutes; RSS per node and drop rate over time.

The graph of ``bench stack`` (detector_node, track_buffer_node, tracker_node, latency_monitor,
optionally visualizer_node; the launcher's command lines, parameter file and Fast DDS profile) is
fed by ``bag_player`` looping a bag at ``--rate`` with wall-clock restamping. Every
``--sample-period`` seconds the resident memory and CPU of every node's process tree are sampled
and the frames played in the interval are checked for their Track3DArray (a frame counts as
dropped when no tracks with its stamp arrived ``--lag`` seconds later). ``--kill NODE[,NODE]``
kills each named node with SIGKILL once during the run (at ``--kill-at`` seconds, then every
``--kill-gap``), restarts it at once with the same command line, and measures the recovery time:
kill until the node's output topic carries a message again (the launcher's respawn delay is not
included), and for tracker_node whether any track id published after the restart had been
published before it. Writes JSON (per-sample series, per-node RSS growth after ``--warmup``,
drop fraction per half, recoveries) and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ba_perception.bench.stack import (
    GRAPH_NODES,
    TOPIC_DET,
    TOPIC_IMAGE,
    TOPIC_INFO,
    TOPIC_OBS,
    TOPIC_ODOM,
    TOPIC_TRACKS,
    NodeProcess,
    Probe,
    StackBenchError,
    _spec,
    _wait,
    add_bag_arguments,
    bag_image_rate,
    ensure_bag,
    host_info,
    model_params,
    ros_environment,
)
from ba_perception.graph import default_params_file

OUTPUT_OF = {"tracker_node": TOPIC_TRACKS, "track_buffer_node": TOPIC_DET, "detector_node": TOPIC_OBS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options."""
    parser.add_argument("--minutes", type=float, default=10.0, help="measured run time, minutes")
    parser.add_argument("--rate", type=float, default=10.0, help="input frame rate, Hz")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds after the start taken as warm-up (RSS baseline)")
    parser.add_argument("--sample-period", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--lag", type=float, default=5.0, help="a frame without tracks this long after it was played is dropped")
    parser.add_argument("--kill", default="", help="comma-separated nodes to kill -9 once each and restart "
                        "(tracker_node, track_buffer_node, detector_node)")
    parser.add_argument("--kill-at", type=float, default=60.0, help="seconds into the run of the first kill")
    parser.add_argument("--kill-gap", type=float, default=30.0, help="seconds between kills")
    add_bag_arguments(parser, frames=100, width=640, height=192)  # the bag is looped
    parser.add_argument("--visualizer", action="store_true", help="also run visualizer_node")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE", help="override a node parameter")
    parser.add_argument("--params-file", default="", help="parameter file (default: the package's config/stack.yaml)")
    parser.add_argument("--domain-id", type=int, default=0, help="ROS_DOMAIN_ID (default: a private one from the pid)")
    parser.add_argument("--cache", default="out/bench/stack_cache", help="rendered bag and random model cache")
    parser.add_argument("--out", default="out/bench/soak.json", help="JSON output")
    parser.add_argument("--plot", default="out/bench/soak.png", help="PNG output ('' = none)")


class SoakProbe(Probe):
    """:class:`Probe` plus arrival times of every output topic and the track ids with their arrival time."""

    def __init__(self, domain_id: int) -> None:
        super().__init__(domain_id)
        from ba_perception.ros.params import qos_profile
        from ba_perception_msgs.msg import ObjectObservationArray, Track3DArray

        self.arrivals: dict[str, list[float]] = {TOPIC_TRACKS: [], TOPIC_DET: [], TOPIC_OBS: []}
        self.ids: list[tuple[float, list[int]]] = []
        self.node.create_subscription(Track3DArray, TOPIC_TRACKS, self._on_track_msg, qos_profile("reliable", 100))
        self.node.create_subscription(ObjectObservationArray, TOPIC_OBS,
                                      lambda m: self.arrivals[TOPIC_OBS].append(time.monotonic()), qos_profile("reliable", 100))
        self.in_times: list[float] = []

    def _on_info(self, raw: bytes) -> None:
        super()._on_info(raw)
        self.in_times.append(time.monotonic())

    def _on_det(self, msg) -> None:
        self.arrivals[TOPIC_DET].append(time.monotonic())

    def _on_track_msg(self, msg) -> None:
        now = time.monotonic()
        self.arrivals[TOPIC_TRACKS].append(now)
        self.ids.append((now, [int(t.track_id) for t in msg.tracks]))


def _kill_and_restart(proc: NodeProcess, probe: SoakProbe, timeout_s: float = 120.0) -> tuple[dict, NodeProcess]:
    """SIGKILL ``proc``'s process group, start it again, wait until its output topic carries a message."""
    topic = OUTPUT_OF[proc.name]
    t_kill = time.monotonic()
    ids_before = {i for _, ids in probe.ids for i in ids}
    gids_before = {bytes(i.endpoint_gid) for i in probe.node.get_publishers_info_by_topic(topic)}
    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()
    restarted = NodeProcess(_spec(proc.name), proc.params_file, proc.overrides, proc.env, proc.log_path.with_suffix(".restart.log"))
    deadline = t_kill + timeout_s
    t_ready = None
    while time.monotonic() < deadline:
        probe.spin(0.02)
        if t_ready is None and any(bytes(i.endpoint_gid) not in gids_before
                                   for i in probe.node.get_publishers_info_by_topic(topic)):
            t_ready = time.monotonic()  # the new process has started, created its publisher and been discovered
        if any(t > t_kill + 0.05 for t in probe.arrivals[topic]):
            break
    after = [t for t in probe.arrivals[topic] if t > t_kill + 0.05]
    res: dict[str, Any] = {"node": proc.name, "killed_at_s": None, "output_topic": topic,
           "publisher_back_s": (t_ready - t_kill) if t_ready is not None else None,
           "recovery_s": (after[0] - t_kill) if after else None}
    if proc.name == "tracker_node":
        probe.spin(5.0)  # let new tracks be born and confirmed
        new_ids = {i for t, ids in probe.ids if t > t_kill for i in ids}
        res.update(ids_before=len(ids_before), ids_after=len(new_ids), reused_ids=sorted(new_ids & ids_before)[:20],
                   n_reused=len(new_ids & ids_before))
    return res, restarted


def _kill_next(name: str, procs: dict[str, NodeProcess], probe: SoakProbe, t_s: float) -> dict:
    """Kill node ``name`` ``t_s`` seconds into the soak, restart it in ``procs`` and report its recovery."""
    print(f"  kill -9 {name} at {t_s:.0f} s ...", flush=True)
    res, procs[name] = _kill_and_restart(procs[name], probe)
    procs[name].start_sampling()
    res["killed_at_s"] = round(t_s, 1)
    print(f"    publisher back after {res['publisher_back_s']} s, outputs resumed after "
          f"{res['recovery_s'] if res['recovery_s'] is not None else 'never'} s"
          + (f", reused track ids: {res.get('n_reused')}" if name == "tracker_node" else ""), flush=True)
    return res


def _take_sample(procs: dict[str, NodeProcess], probe: SoakProbe, cut: int, now: float, t_s: float,
                 lag: float) -> tuple[dict[str, Any], int]:
    """Sample every node's CPU / RSS and judge the frames played before ``now - lag`` (monotonic seconds).

    Returns:
        The sample (``t_s`` seconds into the soak) and the new ``cut``: frames ``[0, cut)`` of
        ``probe.in_stamps`` are judged.
    """
    for p in procs.values():
        p.sample()
    ready = [i for i in range(cut, len(probe.in_times)) if probe.in_times[i] <= now - lag]
    judged = probe.in_stamps[cut:cut + len(ready)]
    cut += len(ready)
    dropped = sum(1 for s in judged if s not in probe.out_stamps)
    rss_mb = {n: p.rss_mb[-1] if p.rss_mb else None for n, p in procs.items()}
    sample = {"t_s": round(t_s, 2), "frames": len(judged), "dropped": dropped,
              "drop_fraction": dropped / len(judged) if judged else None,
              "rss_mb": rss_mb,
              "cpu_pct": {n: p.cpu[-1] if p.cpu else None for n, p in procs.items()}}
    rss = " ".join(f"{n.split('_')[0]} {v:.0f}" for n, v in rss_mb.items() if v)
    print(f"  {sample['t_s']:6.0f} s  frames {len(judged):3d} dropped {dropped:3d}  RSS MB {rss}", flush=True)
    return sample, cut


def _rss_growth(series: list[float], t: list[float], warmup: float) -> dict:
    a = np.asarray(series, float)
    tt = np.asarray(t, float)
    after = a[tt >= warmup]
    if after.size < 2:
        return {"rss_after_warmup_mb": None, "rss_end_mb": float(a[-1]) if a.size else None, "growth_pct": None}
    base, end = float(np.median(after[: max(1, after.size // 10)])), float(np.median(after[-max(1, after.size // 10):]))
    return {"rss_after_warmup_mb": base, "rss_end_mb": end, "rss_max_mb": float(after.max()),
            "growth_pct": 100.0 * (end - base) / base if base > 0 else None}


def run(args: argparse.Namespace) -> int:
    """Run the soak."""
    from ba_perception.cli import CommandError

    if args.minutes <= 0 or args.rate <= 0 or args.sample_period <= 0:
        raise CommandError("--minutes, --rate and --sample-period must be > 0")
    kills = [k for k in args.kill.split(",") if k]
    for k in kills:
        if k not in OUTPUT_OF:
            raise CommandError(f"--kill {k}: choose from {sorted(OUTPUT_OF)}")
    params_file = Path(args.params_file) if args.params_file else default_params_file()
    domain = args.domain_id or 150 + os.getpid() % 80
    out = Path(args.out)
    try:
        bag, bag_info = ensure_bag(args)
        bag_rate, bag_frames = bag_image_rate(bag)
        weight_params, weights = model_params(args)
    except StackBenchError as err:
        raise CommandError(str(err)) from err
    duration = 60.0 * args.minutes
    names = list(GRAPH_NODES) + ["latency_monitor"] + (["visualizer_node"] if args.visualizer else [])
    samples: list[dict] = []
    recoveries: list[dict] = []
    logs = out.parent / "soak_logs"
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp, ros_environment(domain, Path(tmp)) as env:
        overrides = weight_params + list(args.set)
        print(f"bench soak: {args.minutes:g} min at {args.rate:g} Hz, bag {bag} ({bag_frames} images looped), "
              f"weights {weights}, domain {domain}", flush=True)
        probe = SoakProbe(domain)
        procs: dict[str, NodeProcess] = {}
        player = None
        try:
            for name in names:
                procs[name] = NodeProcess(_spec(name), params_file, overrides, env, logs / f"{name}.log")
            vis = int(args.visualizer)  # the probe's own subscriptions count: 1 on observations and detections, 2 on tracks
            _wait(probe, list(procs.values()), lambda: probe.subscribers(TOPIC_IMAGE) >= 2 + vis
                  and probe.subscribers(TOPIC_OBS) >= 2 and probe.subscribers(TOPIC_DET) >= 2
                  and probe.subscribers(TOPIC_ODOM) >= 1 and probe.subscribers(TOPIC_TRACKS) >= 3 + vis,
                  "the graph's subscriptions", 180.0)
            player = NodeProcess(_spec("bag_player"), params_file, overrides + [
                f"bag_player.bag:={bag.resolve()}", "bag_player.restamp:=true", "bag_player.loop:=true",
                f"bag_player.topics:=[{TOPIC_IMAGE},{TOPIC_INFO},{TOPIC_ODOM}]", "bag_player.wait_for_subscribers:=1",
                f"bag_player.rate:={args.rate / bag_rate:.6f}", "bag_player.exit_when_done:=false",
                "bag_player.start_delay_s:=2.0"], env, logs / "bag_player.log")
            _wait(probe, list(procs.values()), lambda: probe.frames >= 1, "the first played frame", 60.0)
            for p in procs.values():
                p.start_sampling()
            t0 = time.monotonic()
            next_sample, next_kill = t0 + args.sample_period, t0 + args.kill_at
            cut = 0  # frames [0, cut) of probe.in_stamps were judged already
            while time.monotonic() - t0 < duration:
                probe.spin(0.05)
                now = time.monotonic()
                if kills and now >= next_kill:
                    recoveries.append(_kill_next(kills.pop(0), procs, probe, now - t0))
                    next_kill = time.monotonic() + args.kill_gap
                    next_sample = time.monotonic()  # one sample right after the recovery, then the period again
                if now >= next_sample:
                    next_sample = max(next_sample + args.sample_period, now + 0.5 * args.sample_period)
                    sample, cut = _take_sample(procs, probe, cut, now, now - t0, args.lag)
                    samples.append(sample)
                for n, p in procs.items():
                    if not p.alive():
                        raise CommandError(f"{n} died during the soak:\n{p.tail()}")
        finally:
            if player is not None:
                player.stop()
            for p in procs.values():
                p.stop()
            probe.close()
    t = [s["t_s"] for s in samples]
    per_node = {n: _rss_growth([s["rss_mb"][n] or np.nan for s in samples], t, args.warmup) for n in names}
    judged = [s for s in samples if s["frames"]]
    half = len(judged) // 2
    data: dict[str, Any] = {
        "benchmark": "bench soak", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {**host_info(), "loadavg_end": os.getloadavg()},
        "config": {"minutes": args.minutes, "rate_hz": args.rate, "warmup_s": args.warmup, "sample_period_s": args.sample_period,
                   "lag_s": args.lag, "params_file": str(params_file), "overrides": overrides, "weights": weights,
                   "bag": {**bag_info, "image_rate_hz": bag_rate, "images": bag_frames, "looped": True}, "graph": names,
                   "method": "RSS = psutil, node process tree; a frame is dropped when no Track3DArray with its (restamped) "
                             "stamp arrived within lag; recovery = SIGKILL until the node's output topic carries a "
                             "message again, restarted at once by the bench (no respawn delay)"},
        "summary": {"rss": per_node, "drop_fraction": _drop_fraction(judged), "drop_fraction_first_half": _drop_fraction(judged[:half]),
                    "drop_fraction_second_half": _drop_fraction(judged[half:]), "frames": sum(s["frames"] for s in judged)},
        "recoveries": recoveries, "samples": samples,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    _print_summary(data["summary"], args.warmup)
    print(f"wrote {out}")
    if args.plot:
        _plot(data, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def _drop_fraction(samples: list[dict]) -> float | None:
    """Fraction of the judged frames of ``samples`` that were dropped (None: no frames)."""
    f = sum(s["frames"] for s in samples)
    return sum(s["dropped"] for s in samples) / f if f else None


def _print_summary(summary: dict[str, Any], warmup_s: float) -> None:
    """Print the RSS growth per node and the dropped fraction of frames."""
    print(f"\nRSS growth after {warmup_s:g} s warm-up (median of the first vs last 10 % of samples):")
    for n, g in summary["rss"].items():
        if g.get("growth_pct") is not None:
            print(f"  {n:20s} {g['rss_after_warmup_mb']:7.0f} -> {g['rss_end_mb']:7.0f} MB  ({g['growth_pct']:+.1f} %)")
    s = summary
    print(f"dropped: {100 * (s['drop_fraction'] or 0):.1f} % of {s['frames']} frames (first half "
          f"{100 * (s['drop_fraction_first_half'] or 0):.1f} %, second half {100 * (s['drop_fraction_second_half'] or 0):.1f} %)")


def _plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = data["samples"]
    t = np.array([s["t_s"] for s in samples]) / 60.0
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for n in data["config"]["graph"]:
        a1.plot(t, [s["rss_mb"].get(n) or np.nan for s in samples], label=n)
    for r in data["recoveries"]:
        a1.axvline(r["killed_at_s"] / 60.0, color="k", ls=":", lw=0.8)
    a1.set_ylabel("RSS, MiB")
    a1.legend(fontsize=7)
    a2.plot(t, [100 * s["drop_fraction"] if s["drop_fraction"] is not None else np.nan for s in samples], "r.-")
    a2.set_ylabel("dropped frames, %")
    a2.set_xlabel("minutes")
    c = data["config"]
    fig.suptitle(f"bench soak: {c['rate_hz']:g} Hz for {c['minutes']:g} min, {data['date_utc']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
