"""`ba-perception launch`: start the node graph as processes, like `ros2 launch ba_perception stack.launch.py`.

Both launchers take their node list, launch arguments, typed parameter conversion and remapping
syntax from one function, :func:`ba_perception.graph.plan_graph`; arguments are given as
``--name value`` or, as with ``ros2 launch``, ``name:=value``. Each node runs as
``<exe> --ros-args -r __node:=<name> --params-file <yaml> [-p k:=v] [-r from:=to]``. SIGINT/SIGTERM
stop the graph as ``ros2 launch`` does (SIGINT, then SIGTERM after 5 s, then SIGKILL after 5 s more);
a node that crashes is restarted with a back-off that doubles while it keeps crashing and starts
over once it has run for a while; a node marked ``shutdown_on_exit`` that ends (the bag finished)
stops the whole graph, after ``DRAIN_S`` when it finished cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ba_perception.graph import (
    DRAIN_S,
    LAUNCH_ARGUMENTS,
    PACKAGE,
    RESPAWN_DELAY_S,
    SIGKILL_TIMEOUT_S,
    SIGTERM_TIMEOUT_S,
    GraphError,
    GraphPlan,
    NodeLaunch,
    NodeSpec,
    fastdds_profile,
    launch_value,
    node_launch,
    parse_override,
    plan_graph,
    ros_arg_value,
)

RESPAWN_MAX_DELAY_S = 30.0  # the back-off between restarts of a node that keeps crashing grows up to this
RESPAWN_WINDOW_S = 60.0  # crashes older than this are forgotten: a node that ran this long restarts quickly again


class LaunchError(RuntimeError):
    """The graph cannot be started as asked."""


@dataclass
class Running:
    """One started process of the launcher, with its restart bookkeeping."""
    spec: Any  # NodeLaunch (or NodeSpec): .name, .respawn, .shutdown_on_exit
    cmd: list[str]
    proc: subprocess.Popen
    started: float = 0.0
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)  # monotonic times of recent crashes
    restart_at: float | None = None  # a restart is due at this time
    reported: bool = False  # its failure was logged and counted
    noted: bool = False  # its clean exit was logged


def executable_path(package: str, executable: str) -> Path:
    """Path of a ROS 2 package's executable.

    Where ``ros2 run package executable`` finds it (``<prefix>/lib/<package>/``, via the ament
    index), else this environment's ``bin/`` (the project venv).

    Raises:
        LaunchError: not found in either.
    """
    try:
        from ament_index_python.packages import get_package_prefix

        path = Path(get_package_prefix(package)) / "lib" / package / executable
        if path.exists():
            return path
    except (ImportError, LookupError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        pass
    path = Path(sys.prefix) / "bin" / executable
    if package == PACKAGE and path.exists():
        return path
    hint = "run `make setup`" if package == PACKAGE else f"is {package} installed and sourced?"
    raise LaunchError(f"executable {executable} of {package} not found (ament index or {path.parent}); {hint}")


def command_line(node: NodeLaunch) -> list[str]:
    """The command line of one process of the plan: what launch_ros runs for the same node."""
    cmd = [str(executable_path(node.package, node.executable)), *node.arguments, "--ros-args", "-r", f"__node:={node.name}"]
    if node.params_file is not None:
        cmd += ["--params-file", str(node.params_file)]
    for param, value in node.parameters.items():
        cmd += ["-p", f"{param}:={ros_arg_value(value)}"]
    for src, dst in node.remaps:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def _arguments(args: dict[str, Any], params_file: Path | None, remaps: Sequence[str]) -> dict[str, str]:
    out = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in args.items()}
    if params_file is not None:
        out["params_file"] = str(params_file)
    if remaps:
        out["remap"] = ",".join([*([out["remap"]] if out.get("remap") else []), *remaps])
    return out


def node_command(spec: NodeSpec, args: dict[str, Any], params_file: Path, extra_params: Sequence[str],
                 remaps: Sequence[str]) -> list[str]:
    """The command line of one node (the same as in the graph, without the graph's readiness wait)."""
    try:
        arguments = _arguments(args, params_file, remaps)
        values = {name: launch_value(name, arguments.get(name, arg.default)) for name, arg in LAUNCH_ARGUMENTS.items()}
        overrides: dict[str, Any] = {}
        for item in extra_params:
            node, param, value = parse_override(item)
            if node == spec.name:
                overrides[param] = value
        return command_line(node_launch(spec, values, [spec.name], overrides, Path(values["params_file"] or params_file)))
    except GraphError as err:
        raise LaunchError(str(err)) from err


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
        specs, args, params_file, extra_params, remaps: the nodes to start (a subset of
            :data:`ba_perception.graph.NODES`), launch argument values, parameter file,
            ``NODE.PARAM:=VALUE`` overrides and ``FROM:=TO`` remappings, as for
            :func:`ba_perception.graph.plan_graph` (or build from a plan with :meth:`from_plan`).
        respawn_delay_s: wait before the first restart of a crashed node; doubles with every crash
            within ``respawn_window_s``, up to ``respawn_max_delay_s``. A node is never given up on.
        drain_s: when a ``shutdown_on_exit`` node finishes cleanly (the bag player at the end of
            the bag), keep the rest of the graph running this many seconds more so the frames
            still in the pipeline reach the outputs; a failure stops the graph at once.
        sigterm_timeout_s, sigkill_timeout_s: shutdown escalation, as ``ros2 launch``.
    """

    def __init__(self, specs: Sequence[NodeSpec], args: dict[str, Any], params_file: Path | None,
                 extra_params: Sequence[str], remaps: Sequence[str], respawn_delay_s: float = RESPAWN_DELAY_S,
                 log: Callable[[str], None] = print, drain_s: float = 0.0,
                 respawn_max_delay_s: float = RESPAWN_MAX_DELAY_S, respawn_window_s: float = RESPAWN_WINDOW_S,
                 sigterm_timeout_s: float = SIGTERM_TIMEOUT_S, sigkill_timeout_s: float = SIGKILL_TIMEOUT_S) -> None:
        self.cmds: list[tuple[Any, list[str]]] = []
        if specs:
            try:
                plan = plan_graph(_arguments(args, params_file, remaps), extra_params,
                                  only=[s.name for s in specs], check_files=False)
                self.cmds = [(node, command_line(node)) for node in plan.nodes]
            except GraphError as err:
                raise LaunchError(str(err)) from err
        self.drain_s = drain_s
        self._drain_until: float | None = None
        self.respawn_delay_s = respawn_delay_s
        self.respawn_max_delay_s = respawn_max_delay_s
        self.respawn_window_s = respawn_window_s
        self.sigterm_timeout_s = sigterm_timeout_s
        self.sigkill_timeout_s = sigkill_timeout_s
        self.running: list[Running] = []
        self.stopping = False
        self.exit_code = 0
        self.log = log

    @classmethod
    def from_plan(cls, plan: GraphPlan, **kwargs: Any) -> Launcher:
        """A launcher for the processes of ``plan`` (:func:`ba_perception.graph.plan_graph`).

        Raises:
            LaunchError: an executable is missing.
        """
        launcher = cls([], {}, None, [], [], **kwargs)
        launcher.cmds = [(node, command_line(node)) for node in plan.nodes]
        return launcher

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        # In the launcher's process group, as with ros2 launch: Ctrl-C in a terminal reaches every
        # node, and the launcher's own SIGINT follows (the nodes take both calmly, ros/node.py).
        return subprocess.Popen(cmd, env=graph_env())

    def start(self) -> None:
        """Start every planned process."""
        for spec, cmd in self.cmds:
            proc = self._spawn(cmd)
            self.running.append(Running(spec, cmd, proc, started=time.monotonic()))
            self.log(f"[launch] started {spec.name} (pid {proc.pid})")

    def respawn_delay(self, r: Running, now: float) -> float:
        """Back-off before restarting ``r``: doubles with each crash within the window."""
        r.crashes = [t for t in r.crashes if now - t <= self.respawn_window_s]
        return min(self.respawn_max_delay_s, self.respawn_delay_s * 2 ** max(0, len(r.crashes) - 1))

    def poll(self) -> bool:
        """Supervise once; returns False when the graph has stopped."""
        now = time.monotonic()
        for r in self.running:
            code = r.proc.poll()
            if code is None or self.stopping:
                continue
            if r.spec.shutdown_on_exit:
                if code == 0 and self.drain_s > 0:
                    if self._drain_until is None:
                        self._drain_until = now + self.drain_s
                        self.log(f"[launch] {r.spec.name} finished; letting the pipeline drain for {self.drain_s:.0f} s")
                    if now < self._drain_until:
                        continue
                self.log(f"[launch] {r.spec.name} {'finished' if code == 0 else f'failed (exit {code})'}; "
                         "shutting down the graph")
                self.exit_code = self.exit_code or (0 if code == 0 else 1)
                self.shutdown()
                return False
            if code != 0 and r.spec.respawn:
                if r.restart_at is None:
                    r.crashes.append(now)
                    delay = self.respawn_delay(r, now)
                    r.restart_at = now + delay
                    self.log(f"[launch] {r.spec.name} exited with {code}; restart {r.restarts + 1} in {delay:.2f} s "
                             f"({len(r.crashes)} crash(es) in the last {self.respawn_window_s:.0f} s)")
                elif now >= r.restart_at:
                    r.restarts += 1
                    r.restart_at = None
                    r.proc = self._spawn(r.cmd)
                    r.started = now
                    self.log(f"[launch] restarted {r.spec.name} (pid {r.proc.pid})")
            elif code != 0 and not r.reported:
                r.reported = True
                self.log(f"[launch] {r.spec.name} exited with {code}; not restarted")
                self.exit_code = 1
            elif code == 0 and not r.noted:
                r.noted = True  # (not `reported`: under Ctrl-C the node may be first to see the signal)
                self.log(f"[launch] {r.spec.name} finished (exit 0)")
        return not self.stopping and any(r.proc.poll() is None or r.restart_at is not None for r in self.running)

    def shutdown(self, requested_at: float | None = None) -> None:
        """SIGINT every node; SIGTERM what is alive after ``sigterm_timeout_s``, SIGKILL after ``sigkill_timeout_s`` more.

        Logs each node's exit code and how long it took to stop, counted from ``requested_at`` (the SIGINT the launcher received;
        default now): under Ctrl-C in a terminal the nodes got it too and may have stopped already.
        """
        self.stopping = True
        t0 = time.monotonic() if requested_at is None else requested_at
        alive = [r for r in self.running if r.restart_at is None and not r.reported]
        for r in alive:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGINT)
        for sig, timeout in ((signal.SIGTERM, self.sigterm_timeout_s), (signal.SIGKILL, self.sigkill_timeout_s), (None, 0)):
            deadline = time.monotonic() + timeout
            while alive and time.monotonic() < deadline:
                for r in [r for r in alive if r.proc.poll() is not None]:
                    alive.remove(r)
                    self.log(f"[launch] {r.spec.name} stopped (exit {r.proc.returncode}) after "
                             f"{time.monotonic() - t0:.2f} s")
                time.sleep(0.01)
            if sig is None:
                break
            for r in alive:
                self.log(f"[launch] {r.spec.name} still running after {time.monotonic() - t0:.0f} s; sending {sig.name}")
                try:
                    r.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
        for r in alive:
            r.proc.wait()
            self.log(f"[launch] {r.spec.name} killed (exit {r.proc.returncode})")

    def run(self) -> int:
        """Supervise the processes until they end or a signal arrives; return the exit code."""
        stop: dict[str, Any] = {"flag": False, "at": None}

        def on_signal(signum, frame):  # noqa: ARG001
            stop["flag"] = True
            stop["at"] = stop["at"] or time.monotonic()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop["flag"] and self.poll():
                time.sleep(0.05)
        finally:
            if not self.stopping:
                self.shutdown(stop["at"])
            for s, h in old.items():
                signal.signal(s, h)
        return self.exit_code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``ba-perception launch``."""
    parser.add_argument("assignments", nargs="*", metavar="NAME:=VALUE",
                        help="launch arguments as for ros2 launch, e.g. source:=bag bag:=drive.mcap lockstep:=true")
    for name, arg in LAUNCH_ARGUMENTS.items():
        if name == "remap":
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=arg.description)
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                        help="override one parameter of one node, e.g. detector_node.backend:=torch")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO[,FROM:=TO]",
                        help="remap topics in every node, e.g. /camera/image_raw:=/cam0/image (as remap:=... of ros2 launch)")
    parser.add_argument("--only", default="", help="comma-separated node names to start (default: all enabled)")
    parser.add_argument("--list", action="store_true", help="print the node command lines and exit")


def launch_arguments(args: argparse.Namespace) -> dict[str, str]:
    """The launch argument strings of a parsed command line (``--name value`` and ``name:=value``).

    Raises:
        GraphError: an assignment that is not ``NAME:=VALUE``.
    """
    out: dict[str, str] = {}
    for item in args.assignments:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"{item!r}: expected NAME:=VALUE (a launch argument)")
        out[name] = value
    for name in LAUNCH_ARGUMENTS:
        if name != "remap" and getattr(args, name, None) is not None:
            out[name] = str(getattr(args, name))
    if args.remap:
        out["remap"] = ",".join([*([out["remap"]] if out.get("remap") else []), *args.remap])
    return out


def run(args: argparse.Namespace) -> int:
    """Plan the node graph from the arguments and run it."""
    from ba_perception.cli import CommandError

    try:
        plan = plan_graph(launch_arguments(args), args.set, only=[n for n in args.only.split(",") if n])
        launcher = Launcher.from_plan(plan, drain_s=DRAIN_S)
    except (GraphError, LaunchError) as err:
        raise CommandError(str(err)) from err
    if args.list:
        for _, cmd in launcher.cmds:
            print(" ".join(cmd))
        return 0
    return launcher.run()
