"""`ba-perception launch`: start the node graph as processes, like `ros2 launch ba_perception stack.launch.py`.

Same node list (ba_perception/graph.py), same parameter file, same remapping syntax. Each node
runs as ``<exe> --ros-args -r __node:=<name> --params-file <yaml> [-p k:=v] [-r from:=to]``;
SIGINT/SIGTERM are forwarded; a node that crashes is restarted (respawn); a node marked
``shutdown_on_exit`` that ends cleanly (the bag finished) stops the whole graph.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ba_perception.graph import LAUNCH_ARGUMENTS, NODES, NodeSpec, default_params_file, fastdds_profile


class LaunchError(RuntimeError):
    """The graph cannot be started as asked."""


@dataclass
class Running:
    spec: NodeSpec
    cmd: list[str]
    proc: subprocess.Popen
    restarts: int = 0
    started: float = 0.0


def node_command(spec: NodeSpec, args: dict[str, str], params_file: Path, extra_params: list[str],
                 remaps: list[str]) -> list[str]:
    """The command line of one node (the executable from this environment's bin/)."""
    exe = Path(sys.prefix) / "bin" / spec.executable
    if not exe.exists():
        raise LaunchError(f"executable {spec.executable} not found in {exe.parent}; run `make setup`")
    cmd = [str(exe), "--ros-args", "-r", f"__node:={spec.name}", "--params-file", str(params_file)]
    for param, arg in spec.arg_params.items():
        if args.get(arg, LAUNCH_ARGUMENTS[arg][0]) != "":
            cmd += ["-p", f"{param}:={args.get(arg, LAUNCH_ARGUMENTS[arg][0])}"]
    for item in extra_params:
        node, _, kv = item.partition(".")
        if node == spec.name:
            cmd += ["-p", kv]
    for r in remaps:
        cmd += ["-r", r]
    return cmd


def graph_env() -> dict[str, str]:
    """Environment for the nodes: the shipped Fast DDS profile unless the user set one."""
    env = dict(os.environ)
    profile = str(fastdds_profile())
    env.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", profile)
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", profile)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Launcher:
    """Starts, supervises and stops the processes of the graph.

    Args:
        drain_s: when a ``shutdown_on_exit`` node finishes cleanly (the bag player at the end of
            the bag), keep the rest of the graph running this many seconds more so the frames
            still in the pipeline reach the outputs; a failure stops the graph at once.
    """

    def __init__(self, specs: list[NodeSpec], args: dict[str, str], params_file: Path, extra_params: list[str],
                 remaps: list[str], respawn_delay_s: float = 1.0, max_restarts: int = 5, log=print,
                 drain_s: float = 0.0) -> None:
        self.cmds = [(s, node_command(s, args, params_file, extra_params, remaps)) for s in specs]
        self.drain_s = drain_s
        self._drain_until: float | None = None
        self.respawn_delay_s = respawn_delay_s
        self.max_restarts = max_restarts
        self.running: list[Running] = []
        self.stopping = False
        self.exit_code = 0
        self.log = log

    def start(self) -> None:
        env = graph_env()
        for spec, cmd in self.cmds:
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            self.running.append(Running(spec, cmd, proc, started=time.monotonic()))
            self.log(f"[launch] started {spec.name} (pid {proc.pid})")

    def poll(self) -> bool:
        """Supervise once; returns False when the graph has stopped."""
        for r in self.running:
            code = r.proc.poll()
            if code is None or self.stopping:
                continue
            if r.spec.shutdown_on_exit:
                if code == 0 and self.drain_s > 0:
                    if self._drain_until is None:
                        self._drain_until = time.monotonic() + self.drain_s
                        self.log(f"[launch] {r.spec.name} finished; letting the pipeline drain for {self.drain_s:.0f} s")
                    if time.monotonic() < self._drain_until:
                        continue
                self.log(f"[launch] {r.spec.name} {'finished' if code == 0 else f'failed (exit {code})'}; "
                         "shutting down the graph")
                self.exit_code = self.exit_code or (0 if code == 0 else 1)
                self.shutdown()
                return False
            if code != 0 and r.spec.respawn and r.restarts < self.max_restarts:
                if time.monotonic() - r.started < self.respawn_delay_s:
                    continue
                r.restarts += 1
                self.log(f"[launch] {r.spec.name} exited with {code}; restart {r.restarts}/{self.max_restarts}")
                r.proc = subprocess.Popen(r.cmd, env=graph_env(), start_new_session=True)
                r.started = time.monotonic()
            elif code != 0 and not getattr(r, "reported", False):
                r.reported = True  # type: ignore[attr-defined]
                self.log(f"[launch] {r.spec.name} exited with {code}; not restarted")
                self.exit_code = 1
        return not self.stopping and any(r.proc.poll() is None for r in self.running)

    def shutdown(self, timeout_s: float = 4.0) -> None:
        """SIGINT every node, then SIGKILL what is still alive after ``timeout_s``."""
        self.stopping = True
        for r in self.running:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for r in self.running:
            try:
                r.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
                self.log(f"[launch] {r.spec.name} killed after {timeout_s:.0f} s")

    def run(self) -> int:
        stop = {"flag": False}

        def on_signal(signum, frame):  # noqa: ARG001
            stop["flag"] = True

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop["flag"] and self.poll():
                time.sleep(0.05)
        finally:
            if not self.stopping:
                self.shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return self.exit_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (default, help_) in LAUNCH_ARGUMENTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=default, help=help_)
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                        help="override one parameter of one node, e.g. detector_node.backend:=torch")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="remap a topic in every node, e.g. /camera/image_raw:=/cam0/image")
    parser.add_argument("--only", default="", help="comma-separated node names to start (default: all enabled)")
    parser.add_argument("--list", action="store_true", help="print the node command lines and exit")


def run(args: argparse.Namespace) -> int:
    from ba_perception.cli import CommandError

    launch_args = {k: str(getattr(args, k)) for k in LAUNCH_ARGUMENTS}
    params_file = Path(launch_args["params_file"] or default_params_file())
    if not params_file.is_file():
        raise CommandError(f"parameter file {params_file} not found")
    if launch_args["source"] not in ("bag", "camera", "none"):
        raise CommandError(f"--source must be bag, camera or none, not {launch_args['source']!r}")
    if launch_args["source"] == "bag" and not Path(launch_args["bag"]).exists():
        raise CommandError(f"--bag {launch_args['bag']!r} does not exist (give a rosbag2 to play, or --source camera)")
    only = {n for n in args.only.split(",") if n}
    specs = [s for s in NODES if s.enabled(launch_args) and (not only or s.name in only)]
    try:
        launcher = Launcher(specs, launch_args, params_file, args.set, args.remap)
    except LaunchError as err:
        raise CommandError(str(err)) from err
    if args.list:
        for spec, cmd in launcher.cmds:
            print(" ".join(cmd))
        return 0
    return launcher.run()
