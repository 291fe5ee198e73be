"""`ba-perception bench stack`: the unmodified node graph between a bag player and the latency monitor, at fixed rates.

Modelled on NVIDIA's ros2_benchmark. For every input rate the graph (detector_node,
track_buffer_node, tracker_node, optionally visualizer_node; the same executables, parameter file
and Fast DDS profile as ``ba-perception launch``) is started fresh in a private DDS domain on
localhost, warmed up with a few lockstep frames, and then fed by ``bag_player`` at the rate with
``restamp:=true`` so capture stamps are wall-clock and the latency monitor's ``end_to_end``
(capture stamp -> Track3DArray received) is exact. Per run: per-stage and end-to-end latency
(p50/p95/p99, jitter = p99 - p50), frames in/out/dropped, CPU utilisation and resident memory of
every node process (psutil, sampled), GPU utilisation when ``nvidia-smi`` is present. Then a
peak-throughput search (bisection) for the highest rate with fewer than ``--drop-limit`` dropped
frames. Writes JSON with host info and configuration, and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ba_perception.graph import NODES, NodeSpec, default_params_file, fastdds_profile, package_root
from ba_perception.ros.probe import StackProbe as Probe

TOPIC_IMAGE, TOPIC_INFO, TOPIC_ODOM = "/camera/image_raw", "/camera/camera_info", "/odom"
TOPIC_OBS, TOPIC_DET, TOPIC_TRACKS = "/ba_perception/observations", "/ba_perception/detections", "/ba_perception/tracks"
GRAPH_NODES = ("detector_node", "track_buffer_node", "tracker_node")
KEY_STAGES = ("detector", "track_buffer", "tracker", "end_to_end")


class StackBenchError(RuntimeError):
    """A run of the graph failed (a node died, discovery timed out, no output)."""


def add_bag_arguments(parser: argparse.ArgumentParser, frames: int, width: int, height: int) -> None:
    """The input options of the graph benches (stack, soak): a bag, or the world sequence rendered into one."""
    parser.add_argument("--bag", default="", help="rosbag2 with camera + odometry topics (default: render one)")
    parser.add_argument("--frames", type=int, default=frames, help="frames of the rendered bag")
    parser.add_argument("--preset", default="urban", help="world preset of the rendered bag")
    parser.add_argument("--seed", type=int, default=11, help="world seed of the rendered bag")
    parser.add_argument("--width", type=int, default=width, help="rendered image width")
    parser.add_argument("--height", type=int, default=height, help="rendered image height")
    parser.add_argument("--checkpoint", default="", help="torch checkpoint when models/detector.onnx is absent")
    parser.add_argument("--random-objects", type=int, default=30,
                        help="with a random (untrained) detector: decode exactly this many peaks per frame")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options."""
    parser.add_argument("--rates", default="5,10,15", help="comma-separated input rates, Hz")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured play time per rate (capped by the bag)")
    parser.add_argument("--min-frames", type=int, default=30, help="at least this many frames per rate")
    parser.add_argument("--warmup", type=int, default=8, help="lockstep frames before each measured run")
    parser.add_argument("--drop-limit", type=float, default=0.05, help="a rate is sustained below this dropped fraction")
    parser.add_argument("--peak-steps", type=int, default=3, help="bisection runs of the peak search (0 = off)")
    parser.add_argument("--max-rate", type=float, default=30.0, help="upper end of the peak search, Hz")
    add_bag_arguments(parser, frames=150, width=1242, height=375)
    parser.add_argument("--visualizer", action="store_true", help="also run visualizer_node (markers + overlay image)")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                        help="override one node parameter, e.g. track_buffer_node.max_iterations:=5")
    parser.add_argument("--params-file", default="", help="parameter file (default: the package's config/stack.yaml)")
    parser.add_argument("--omp-threads", type=int, default=0,
                        help="OMP_NUM_THREADS/MKL_NUM_THREADS for the node processes (0 = as shipped: library default)")
    parser.add_argument("--domain-id", type=int, default=0, help="ROS_DOMAIN_ID (default: a private one from the pid)")
    parser.add_argument("--sample-period", type=float, default=0.5, help="CPU/memory sampling period, seconds")
    parser.add_argument("--drain", type=float, default=3.0,
                        help="seconds after the last frame before stopping (at least 2x the warm-up frame time)")
    parser.add_argument("--cache", default="out/bench/stack_cache", help="rendered bag and random model cache")
    parser.add_argument("--out", default="out/bench/stack.json", help="JSON output")
    parser.add_argument("--plot", default="out/bench/stack.png", help="PNG output ('' = none)")


# ------------------------------------------------------------------------------------------------
# inputs: bag and model
# ------------------------------------------------------------------------------------------------
def ensure_bag(args: argparse.Namespace) -> tuple[Path, dict]:
    """The bag to play: ``--bag``, or a rendered synthetic one (cached by its configuration)."""
    if args.bag:
        path = Path(args.bag)
        if not path.exists():
            raise StackBenchError(f"--bag {path} does not exist")
        return path, {"path": str(path)}
    from ba_perception.data.bag import BagWriter
    from ba_perception.data.world import WorldConfig, render_sequence

    cfg = WorldConfig(preset=args.preset, seed=args.seed, width=args.width, height=args.height, n_frames=args.frames)
    cfg.validate()
    path = Path(args.cache) / f"{args.preset}_s{args.seed}_{args.width}x{args.height}_{args.frames}f"
    info = {"path": str(path), "rendered": {"preset": args.preset, "seed": args.seed, "width": args.width,
                                            "height": args.height, "frames": args.frames, "rate_hz": cfg.rate_hz}}
    if path.exists():
        print(f"bag: reusing {path}")
        return path, info
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    with BagWriter(tmp) as bag:
        for i, frame in enumerate(render_sequence(cfg)):
            bag.write(frame)
            if (i + 1) % 25 == 0:
                print(f"  rendered {i + 1}/{cfg.n_frames} frames", flush=True)
    tmp.rename(path)
    print(f"bag: rendered {path} in {time.perf_counter() - t0:.0f} s")
    return path, info


def bag_image_rate(path: Path) -> tuple[float, int]:
    """(recorded image rate in Hz, number of images) of a bag."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == TOPIC_IMAGE]
        if not conns:
            raise StackBenchError(f"{path} has no {TOPIC_IMAGE} topic")
        stamps = [t for _, t, _ in reader.messages(connections=conns)]
    if len(stamps) < 2:
        raise StackBenchError(f"{path} has {len(stamps)} images; need at least 2")
    return float((len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)), len(stamps)


def model_params(args: argparse.Namespace) -> tuple[list[str], str]:
    """detector_node overrides choosing the weights, and a description of them."""
    shipped = package_root() / "models" / "detector.onnx"
    if shipped.is_file():
        return [], f"shipped:{shipped}"
    if args.checkpoint:
        ck = Path(args.checkpoint).resolve()
        if not ck.is_file():
            raise StackBenchError(f"--checkpoint {ck} not found")
        return [f"detector_node.checkpoint:={ck}", "detector_node.backend:=torch"], f"checkpoint:{ck}"
    import torch

    from ba_perception.core.detection.model import MonoDetector
    from ba_perception.train.export import export_onnx

    path = (Path(args.cache) / "random_detector.onnx").resolve()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        export_onnx(MonoDetector().eval(), path)
    n = args.random_objects
    return [f"detector_node.model:={path}", "detector_node.score_threshold:=0.0",
            f"detector_node.max_detections:={n}"], f"random (exported to {path}; decoder keeps the top {n} peaks)"


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ros_environment(domain_id: int, tmp: Path, omp_threads: int = 0) -> Iterator[dict[str, str]]:
    """Private domain on localhost with the shipped Fast DDS profile, for this process and its children.

    ``omp_threads > 0`` sets OMP_NUM_THREADS and MKL_NUM_THREADS in the returned child environment only.
    """
    profile = str(fastdds_profile())
    new = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "FASTRTPS_DEFAULT_PROFILES_FILE": profile, "FASTDDS_DEFAULT_PROFILES_FILE": profile,
           "ROS_HOME": str(tmp / "ros_home"), "ROS_LOG_DIR": str(tmp / "ros_log"), "PYTHONUNBUFFERED": "1"}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        env = dict(os.environ)
        if omp_threads > 0:
            env.update(OMP_NUM_THREADS=str(omp_threads), MKL_NUM_THREADS=str(omp_threads))
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NodeProcess:
    """One node started with the launcher's exact command line, output to a log file."""

    def __init__(self, spec: NodeSpec, params_file: Path, overrides: list[str], env: dict[str, str], log: Path) -> None:
        from ba_perception.launcher import LaunchError, node_command

        try:
            self.cmd = node_command(spec, {}, params_file, overrides, [])
        except LaunchError as err:
            raise StackBenchError(str(err)) from err
        self.name = spec.name
        self.params_file, self.overrides, self.env = params_file, overrides, env  # to start it again
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        import psutil

        self.ps = psutil.Process(self.proc.pid)
        self.cpu: list[float] = []
        self.rss_mb: list[float] = []
        self.cpu_s: list[float] = []  # user + system CPU seconds of the tree, cumulative
        self._known: dict[int, Any] = {}

    def alive(self) -> bool:
        """Whether the node process is still running."""
        return self.proc.poll() is None

    def tree_rss_mb(self) -> float:
        """Resident memory of the node's process tree now, MiB (processes that exit meanwhile count 0)."""
        import psutil

        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss / 2**20
        return total

    def sample(self) -> None:
        """CPU percent (100 = one core) since the last call and RSS, summed over the process tree."""
        import psutil

        try:
            procs = [self.ps] + self.ps.children(recursive=True)
        except psutil.Error:
            return
        cpu = rss = total = 0.0
        for p in procs:
            try:
                p = self._known.setdefault(p.pid, p)
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss / 2**20
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        self.cpu.append(cpu)
        self.rss_mb.append(rss)
        self.cpu_s.append(total)

    def start_sampling(self) -> None:
        """Start a fresh sampling window (clears the samples, primes CPU accounting)."""
        self.cpu.clear()
        self.rss_mb.clear()
        self.cpu_s.clear()
        self.sample()  # primes cpu_percent; keeps the CPU-time origin
        self.cpu.clear()
        self.rss_mb.clear()

    def stop(self, timeout_s: float = 10.0) -> int:
        """Stop the node (SIGINT, then SIGKILL of its group after ``timeout_s``); return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)

    def tail(self, n: int = 1500) -> str:
        """The last ``n`` characters of the node's log ('' when unreadable)."""
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def usage(self, frames: int) -> dict:
        """Sampled CPU % and RSS, and CPU seconds used over the window (also per played frame)."""
        if not self.cpu:
            return {"samples": 0}
        c, r = np.asarray(self.cpu), np.asarray(self.rss_mb)
        cpu_s = self.cpu_s[-1] - self.cpu_s[0] if len(self.cpu_s) > 1 else float("nan")
        return {"samples": int(c.size), "cpu_mean_pct": float(c.mean()), "cpu_p95_pct": float(np.percentile(c, 95)),
                "rss_max_mb": float(r.max()), "rss_mean_mb": float(r.mean()), "cpu_s": cpu_s,
                "cpu_ms_per_played_frame": 1e3 * cpu_s / frames if frames else None}


def _spec(name: str) -> NodeSpec:
    for s in NODES:
        if s.name == name:
            return dataclasses.replace(s, shutdown_on_exit=False)
    raise StackBenchError(f"node {name} is not in the graph (ba_perception/graph.py)")


def _wait(probe: Probe, procs: list[NodeProcess], cond, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs:
            if not p.alive():
                raise StackBenchError(f"{p.name} exited with {p.proc.returncode} while waiting for {what}:\n{p.tail()}")
        probe.spin(0.1)
    raise StackBenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _gpu_sample() -> dict | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
        util, mem = (float(v) for v in out.split(","))
        return {"util_pct": util, "mem_used_mb": mem}
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------
# one run at one rate
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunConfig:
    """What every run shares."""

    bag: Path
    bag_rate_hz: float
    bag_frames: int
    params_file: Path
    overrides: list[str]
    env: dict[str, str]
    domain_id: int
    visualizer: bool
    warmup: int
    seconds: float
    min_frames: int
    drain_s: float
    sample_period_s: float
    log_dir: Path


def run_rate(rate_hz: float, rc: RunConfig, probe: Probe) -> dict:
    """Start the graph, warm it up, play ``rate_hz`` for the measured frames, stop; the run's numbers."""
    tag = f"{rate_hz:g}hz"
    logs = rc.log_dir / tag
    summary = (logs / "latency_summary.json").resolve()
    summary.unlink(missing_ok=True)
    n_frames = int(min(rc.bag_frames, max(rc.min_frames, round(rate_hz * rc.seconds))))
    names = list(GRAPH_NODES) + (["visualizer_node"] if rc.visualizer else [])
    graph: list[NodeProcess] = []
    extra: list[NodeProcess] = []
    player_common = [f"bag_player.bag:={rc.bag.resolve()}", "bag_player.restamp:=true",
                     f"bag_player.topics:=[{TOPIC_IMAGE},{TOPIC_INFO},{TOPIC_ODOM}]", "bag_player.wait_for_subscribers:=1",
                     "bag_player.exit_when_done:=true"]
    try:
        for name in names:
            graph.append(NodeProcess(_spec(name), rc.params_file, rc.overrides, rc.env, logs / f"{name}.log"))
        n_img = 1 + int(rc.visualizer)
        _wait(probe, graph, lambda: probe.subscribers(TOPIC_IMAGE) >= n_img and probe.subscribers(TOPIC_OBS) >= 1
              and probe.subscribers(TOPIC_DET) >= 2 and probe.subscribers(TOPIC_ODOM) >= 1
              and (not rc.visualizer or probe.subscribers(TOPIC_TRACKS) >= 1), "the graph's subscriptions", 180.0)
        # warm-up: lockstep frames (each waits for its tracks), then let the last one leave the graph
        t0 = time.monotonic()
        probe.reset()
        warm = NodeProcess(_spec("bag_player"), rc.params_file, rc.overrides + player_common + [
            "bag_player.lockstep:=true", "bag_player.lockstep_timeout_s:=60.0"], rc.env, logs / "bag_player_warmup.log")
        extra.append(warm)
        _wait(probe, graph, lambda: probe.frames > rc.warmup or not warm.alive(), "warm-up frames", 60.0 + 60.0 * rc.warmup)
        warm.stop()
        per_frame = (time.monotonic() - t0) / max(1, probe.frames)
        probe.spin(1.0 + 2.0 * per_frame)
        monitor = NodeProcess(_spec("latency_monitor"), rc.params_file, rc.overrides + [
            f"latency_monitor.summary_path:={summary}"], rc.env, logs / "latency_monitor.log")
        extra.append(monitor)
        _wait(probe, graph + [monitor], lambda: probe.subscribers(TOPIC_TRACKS) >= 1 + int(rc.visualizer)
              and probe.subscribers(TOPIC_IMAGE) >= n_img + 1, "the latency monitor's subscriptions", 60.0)
        probe.spin(0.5)
        # measured run
        probe.reset()
        player = NodeProcess(_spec("bag_player"), rc.params_file, rc.overrides + player_common + [
            f"bag_player.rate:={rate_hz / rc.bag_rate_hz:.6f}", "bag_player.lockstep:=false",
            # the player waits for one subscriber per topic; the delay lets every other reader (monitor,
            # probe) match too, so none misses the first frames (volatile durability)
            "bag_player.start_delay_s:=3.0"], rc.env,
            logs / "bag_player.log")
        extra.append(player)
        _wait(probe, graph, lambda: probe.frames >= 1 or not player.alive(), "the first played frame", 60.0)
        sampled = graph + [monitor]
        for p in sampled:
            p.start_sampling()
        sys_cpu: list[float] = []
        gpu: list[dict] = []
        import psutil

        psutil.cpu_percent(None)
        t_play = time.monotonic()
        deadline = t_play + n_frames / rate_hz + 30.0
        next_sample = t_play + rc.sample_period_s
        while probe.frames < n_frames and player.alive() and time.monotonic() < deadline:
            probe.spin(min(0.05, max(0.0, next_sample - time.monotonic())))
            if time.monotonic() >= next_sample:
                next_sample += rc.sample_period_s
                for p in sampled:
                    p.sample()
                sys_cpu.append(psutil.cpu_percent(None))
                g = _gpu_sample()
                if g:
                    gpu.append(g)
            for p in graph:
                if not p.alive():
                    raise StackBenchError(f"{p.name} died during the run:\n{p.tail()}")
        played_s = time.monotonic() - t_play
        player.stop()
        probe.spin(min(15.0, max(rc.drain_s, 2.0 * per_frame)))  # let frames in flight come out
        for p in sampled:
            p.sample()
        frames_played, dropped = probe.frames, probe.dropped()
        objects, refined = list(probe.objects), list(probe.refined)
        monitor.stop(15.0)
        if not summary.is_file():
            raise StackBenchError(f"latency_monitor wrote no summary ({summary}):\n{monitor.tail()}")
        data = json.loads(summary.read_text())
    finally:
        for p in extra + graph:
            p.stop()
    counters = data.get("counters", {})
    f_in, f_out = frames_played, frames_played - dropped
    stages = {}
    for s in data.get("stages", []):
        s = dict(s)
        s["jitter_ms"] = s["p99_ms"] - s["p50_ms"]
        stages[s.pop("stage")] = s
    return {
        "rate_hz": float(rate_hz), "frames_target": n_frames, "frames_played_seen": frames_played,
        "frames_in": f_in, "frames_out": f_out, "dropped": dropped,
        "drop_fraction": dropped / f_in if f_in else 1.0,
        "monitor_counters": {**counters, "note": "the monitor's own counts (best-effort input subscription, "
                                                 "window-based expiry); frames_in/out above are matched by stamp"},
        "play_seconds": played_s, "achieved_input_hz": (frames_played - 1) / played_s if played_s > 0 and frames_played > 1 else 0.0,
        "objects_per_frame": _mean_max(objects), "refined_per_frame": _mean_max(refined),
        "stages": stages,
        "processes": {p.name: p.usage(frames_played) for p in graph + [monitor]},
        "system_cpu_pct": {"mean": float(np.mean(sys_cpu)) if sys_cpu else None,
                           "note": "all cores, 100 = every core busy; includes other users of the machine"},
        "gpu": ({"util_mean_pct": float(np.mean([g["util_pct"] for g in gpu])),
                 "mem_max_mb": float(max(g["mem_used_mb"] for g in gpu))} if gpu else None),
        "warmup_s_per_frame": per_frame,
        "logs": str(logs),
    }


def _mean_max(v: list[int]) -> dict:
    return {"mean": float(np.mean(v)), "max": int(max(v)), "n": len(v)} if v else {"mean": 0.0, "max": 0, "n": 0}


def sustained(run: dict, limit: float) -> bool:
    """The rate is sustained: outputs for all but ``limit`` of the input frames."""
    return run["frames_in"] > 0 and run["drop_fraction"] < limit


def next_peak_rate(runs: list[dict], limit: float, max_rate: float) -> float | None:
    """Next rate of the bisection: between the highest sustained and the lowest failing rate tried."""
    ok = [r["rate_hz"] for r in runs if sustained(r, limit)]
    lo = max(ok) if ok else 0.0
    bad = [r["rate_hz"] for r in runs if not sustained(r, limit) and r["rate_hz"] > lo]
    hi = min(bad) if bad else None
    if hi is None:
        return None if lo >= max_rate else min(max_rate, 2.0 * lo)
    mid = round(0.5 * (lo + hi), 2)
    return None if hi - lo < 0.1 * max(hi, 1.0) or mid in {r["rate_hz"] for r in runs} else mid


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def host_info() -> dict:
    """Machine, OS and library versions (:func:`~ba_perception.eval.results.machine_info`) plus the ROS middleware."""
    from ba_perception.eval.results import machine_info

    try:
        from importlib.metadata import version

        rclpy_v = version("ros-jazzy-rclpy")
    except Exception:  # noqa: BLE001 - metadata lookup is best effort
        rclpy_v = None
    return {**machine_info(), "rclpy_pkg": rclpy_v, "rmw": os.environ.get("RMW_IMPLEMENTATION", "default (rmw_fastrtps_cpp)")}


def print_runs(runs: list[dict]) -> None:
    """Summary table of all runs, then the stage table of each."""
    head = (f"{'rate':>6s} {'in':>5s} {'out':>5s} {'drop%':>6s} {'e2e p50':>8s} {'p95':>7s} {'p99':>7s} {'jitter':>7s}"
            f" {'det p50':>8s} {'tb p50':>7s} {'trk p50':>8s} {'obj':>5s} {'CPU% det/tb/trk':>16s} {'CPUms/frame det/tb/trk':>22s}"
            f" {'RSS MB det/tb/trk':>18s}")
    print(head)
    print("-" * len(head))
    for r in sorted(runs, key=lambda r: r["rate_hz"]):
        st, pr = r["stages"], r["processes"]
        e = st.get("end_to_end", {})

        def p50(name, st=st):  # st bound per run (B023)
            return st.get(name, {}).get("p50_ms", float("nan"))

        cpu = "/".join(f"{pr[n].get('cpu_mean_pct', float('nan')):.0f}" for n in GRAPH_NODES)
        rss = "/".join(f"{pr[n].get('rss_max_mb', float('nan')):.0f}" for n in GRAPH_NODES)
        cms = "/".join(f"{pr[n].get('cpu_ms_per_played_frame') or float('nan'):.0f}" for n in GRAPH_NODES)
        print(f"{r['rate_hz']:6.2f} {r['frames_in']:5d} {r['frames_out']:5d} {100 * r['drop_fraction']:6.1f} "
              f"{e.get('p50_ms', float('nan')):8.1f} {e.get('p95_ms', float('nan')):7.1f} {e.get('p99_ms', float('nan')):7.1f} "
              f"{e.get('jitter_ms', float('nan')):7.1f} {p50('detector'):8.1f} {p50('track_buffer'):7.1f} {p50('tracker'):8.1f} "
              f"{r['objects_per_frame']['mean']:5.1f} {cpu:>16s} {cms:>22s} {rss:>18s}")


def print_stages(run: dict) -> None:
    """Print the per-stage latency table of one run."""
    print(f"\nper-stage latency at {run['rate_hz']:g} Hz (ms; .queue = waiting before the stage, transport.X = DDS hop into X)")
    print(f"{'stage':26s} {'n':>5s} {'p50':>8s} {'p95':>8s} {'p99':>8s} {'jitter':>8s} {'max':>8s}")
    for name, s in run["stages"].items():
        print(f"{name:26s} {s['count']:5d} {s['p50_ms']:8.1f} {s['p95_ms']:8.1f} {s['p99_ms']:8.1f} {s['jitter_ms']:8.1f} "
              f"{s['max_ms']:8.1f}")


def plot(runs: list[dict], peak: float | None, drop_limit: float, path: Path, title: str) -> None:
    """Latency, drops, per-stage compute and CPU per node against the input rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["rate_hz"])
    x = [r["rate_hz"] for r in runs]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    a = ax[0, 0]
    for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        a.plot(x, [r["stages"].get("end_to_end", {}).get(f"{q}_ms", np.nan) for r in runs], style, label=f"end-to-end {q}")
    a.axhline(150, color="r", lw=0.8, label="bar: p50 150 ms")
    a.set(xlabel="input rate (Hz)", ylabel="ms", title="end-to-end latency (capture -> tracks)")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(x, [100 * r["drop_fraction"] for r in runs], "o-")
    a.axhline(100 * drop_limit, color="r", lw=0.8, label=f"{100 * drop_limit:.0f} % limit")
    if peak:
        a.axvline(peak, color="g", lw=0.8, label=f"peak {peak:g} Hz")
    a.set(xlabel="input rate (Hz)", ylabel="% frames without output", title="dropped frames")
    a.legend(fontsize=8)
    a = ax[1, 0]
    stages = ["detector.queue", "detector", "transport.track_buffer", "track_buffer.queue", "track_buffer",
              "transport.tracker", "tracker.queue", "tracker", "transport.monitor"]
    bottom = np.zeros(len(runs))
    labels = [f"{v:g}" for v in x]
    for s in stages:
        v = np.array([r["stages"].get(s, {}).get("p50_ms", 0.0) for r in runs])
        a.bar(labels, v, bottom=bottom, label=s)
        bottom += v
    a.set(xlabel="input rate (Hz)", ylabel="ms (p50 of each part)", title="where the time goes (p50 per part)")
    a.legend(fontsize=7)
    a = ax[1, 1]
    w = 0.8 / len(GRAPH_NODES)
    for i, n in enumerate(GRAPH_NODES):
        a.bar(np.arange(len(runs)) + i * w, [r["processes"][n].get("cpu_mean_pct", 0.0) for r in runs], w, label=n)
    a.set_xticks(np.arange(len(runs)) + w, labels)
    a.set(xlabel="input rate (Hz)", ylabel="% of one core (mean)", title="CPU per node process")
    a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _run_rates(rates: list[float], args: argparse.Namespace, rc: RunConfig, probe: Probe, runs: list[dict]) -> None:
    """Run the graph at each of ``rates``, then search the peak rate; append each run's result to ``runs``."""
    from ba_perception.cli import CommandError

    plan = [(r, "fixed") for r in rates]
    steps = 0
    while plan or steps < args.peak_steps:
        if plan:
            rate, kind = plan.pop(0)
        else:
            nxt = next_peak_rate(runs, args.drop_limit, args.max_rate)
            if nxt is None:
                break
            rate, kind = nxt, "peak_search"
            steps += 1
        print(f"[{kind}] {rate:g} Hz ...", flush=True)
        try:
            r = run_rate(rate, rc, probe)
        except StackBenchError as err:
            raise CommandError(f"run at {rate:g} Hz failed: {err}") from err
        r["kind"] = kind
        runs.append(r)
        e = r["stages"].get("end_to_end", {})
        print(f"    in {r['frames_in']} out {r['frames_out']} dropped {100 * r['drop_fraction']:.1f} %, "
              f"end-to-end p50 {e.get('p50_ms', float('nan')):.0f} ms p99 {e.get('p99_ms', float('nan')):.0f} ms, "
              f"{r['objects_per_frame']['mean']:.1f} objects/frame", flush=True)


def _bar_10hz(runs: list[dict]) -> dict | None:
    """Whether the 10 Hz run (if any) met the bar: at most 5 % dropped and end-to-end p50 <= 150 ms."""
    at10 = [r for r in runs if abs(r["rate_hz"] - 10.0) < 1e-6]
    if not at10:
        return None
    e2e = at10[0]["stages"].get("end_to_end", {}).get("p50_ms")
    bar = {"rate_hz": 10.0, "drop_fraction": at10[0]["drop_fraction"], "end_to_end_p50_ms": e2e,
           "drops_ok": sustained(at10[0], 0.05), "p50_ok": e2e is not None and e2e <= 150.0}
    bar["met"] = bar["drops_ok"] and bar["p50_ok"]
    return bar


def run(args: argparse.Namespace) -> int:
    """Run the benchmark."""
    from ba_perception.cli import CommandError

    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError as err:
        raise CommandError(f"--rates must be comma-separated numbers, got {args.rates!r}") from err
    if not rates or min(rates) <= 0:
        raise CommandError("--rates needs at least one positive rate")
    if args.warmup < 1 or args.min_frames < 2 or args.seconds <= 0:
        raise CommandError("--warmup >= 1, --min-frames >= 2 and --seconds > 0 are required")
    params_file = Path(args.params_file) if args.params_file else default_params_file()
    if not params_file.is_file():
        raise CommandError(f"parameter file {params_file} not found")
    for item in args.set:
        if "." not in item or ":=" not in item:
            raise CommandError(f"--set {item!r}: use NODE.PARAM:=VALUE")
    domain = args.domain_id or 150 + os.getpid() % 80
    out = Path(args.out)
    try:
        bag, bag_info = ensure_bag(args)
        bag_rate, bag_frames = bag_image_rate(bag)
        weight_params, weights = model_params(args)
    except StackBenchError as err:
        raise CommandError(str(err)) from err
    bag_info.update({"image_rate_hz": bag_rate, "images": bag_frames})
    load_before = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_stack_") as tmp, ros_environment(domain, Path(tmp), args.omp_threads) as env:
        rc = RunConfig(bag=bag, bag_rate_hz=bag_rate, bag_frames=bag_frames, params_file=params_file,
                       overrides=weight_params + list(args.set), env=env, domain_id=domain, visualizer=args.visualizer,
                       warmup=args.warmup, seconds=args.seconds, min_frames=args.min_frames, drain_s=args.drain,
                       sample_period_s=args.sample_period, log_dir=out.parent / "stack_logs")
        print(f"bench stack: bag {bag} ({bag_frames} images at {bag_rate:.1f} Hz), weights {weights}, "
              f"domain {domain}, rates {rates}, peak search {args.peak_steps} steps")
        probe = Probe(domain)
        try:
            _run_rates(rates, args, rc, probe, runs)
        finally:
            probe.close()
    ok = [r["rate_hz"] for r in runs if sustained(r, args.drop_limit)]
    peak = max(ok) if ok else None
    bar = _bar_10hz(runs)
    data = {
        "benchmark": "bench stack", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {**host_info(), "loadavg_before": load_before},
        "config": {"params_file": str(params_file), "overrides": rc.overrides, "weights": weights, "bag": bag_info,
                   "graph": list(GRAPH_NODES) + (["visualizer_node"] if args.visualizer else []),
                   "harness": ["bag_player (restamp:=true)", "latency_monitor"], "ros_domain_id": domain,
                   "discovery_range": "LOCALHOST", "fastdds_profile": str(fastdds_profile()),
                   "omp_threads": args.omp_threads or "library default", "warmup_frames": args.warmup,
                   "seconds_per_rate": args.seconds, "drop_limit": args.drop_limit, "sample_period_s": args.sample_period,
                   "method": "per rate a fresh graph; lockstep warm-up excluded; dropped = played frames (stamps on "
                             "camera_info) with no Track3DArray of the same stamp by the end of the drain; end_to_end = "
                             "monitor arrival - restamped capture stamp (wall clock); "
                             "CPU = psutil per node process tree (100 % = one core), sampled; cpu_ms_per_played_frame "
                             "= user+system CPU seconds over the measured window and drain / played frames"},
        "runs": runs, "peak_rate_hz": peak, "bar_10hz": bar,
    }
    print()
    print_runs(runs)
    for r in sorted(runs, key=lambda r: r["rate_hz"]):
        if r["kind"] == "fixed":
            print_stages(r)
    print(f"\npeak sustained rate (< {100 * args.drop_limit:.0f} % dropped): "
          f"{f'{peak:g} Hz' if peak else 'none of the rates tried'}")
    if bar:
        print(f"bar (10 Hz, < 5 % drops, end-to-end p50 <= 150 ms): {'MET' if bar['met'] else 'NOT met'} "
              f"(drops {100 * bar['drop_fraction']:.1f} %, p50 {bar['end_to_end_p50_ms'] or float('nan'):.0f} ms)")
    print(f"weights: {weights}; load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out}")
    if args.plot:
        plot(runs, peak, args.drop_limit, Path(args.plot),
             f"bench stack: {platform.node()} {os.cpu_count()} CPUs, weights {weights.split(' ')[0]}, "
             f"OMP threads {args.omp_threads or 'default'}, {data['date_utc']}")
        print(f"wrote {args.plot}")
    return 0
