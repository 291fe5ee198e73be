"""The node graph of the stack, in one place: read by launch/stack.launch.py and `ba-perception launch`.

:data:`LAUNCH_ARGUMENTS` declares the launch arguments (one syntax for both launchers:
``ros2 launch ... name:=value`` and ``ba-perception launch name:=value`` or ``--name value``, with
the same comma-separated ``remap:="FROM:=TO,FROM:=TO"``); :data:`NODES` lists the
nodes, the argument values that enable each one and the node parameters each argument sets.
:func:`plan_graph` turns the argument strings into the node list with *typed* parameter values
(YAML rules, as ``ros2 param set`` and ``-p`` use) and remappings, and rejects an unknown argument
or a bad value with one :class:`GraphError` before any process starts. Parameters of every node
come from one file, ``config/stack.yaml``; the arguments override it only when given.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "ba_perception"
MSGS_PACKAGE = "ba_perception_msgs"
# Every node announces on this latched topic that it is ready to process (ros/node.py, run_node);
# the bag player waits for the graph's nodes before the first frame (defect: playing into a loading node).
READY_TOPIC = "/ba_perception/ready"
# Process supervision shared by both launchers (the values `ros2 launch` uses for its escalation).
RESPAWN_DELAY_S = 1.0
SIGTERM_TIMEOUT_S = 5.0  # SIGINT first; SIGTERM when still alive after this long
SIGKILL_TIMEOUT_S = 5.0  # then SIGKILL after this long
DRAIN_S = 3.0  # after the bag player finished cleanly, frames still in the pipeline get this long to reach the outputs
# The colcon command that builds both packages (the repository root is a package, so colcon does not
# look below it for ba_perception_msgs by itself); README "On a vehicle" and CI use it verbatim.
COLCON_BUILD = "colcon build --base-paths src src/ba_perception/ba_perception_msgs --packages-up-to ba_perception"

ParameterValue = bool | int | float | str | list
_PLAIN = re.compile(r"[A-Za-z0-9_/.][A-Za-z0-9_/.:~+@-]*")  # a string rcl's -p reads as written
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


class GraphError(ValueError):
    """A launch argument, override or remapping is invalid, or something the graph needs is missing."""


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument: its default (a string, as on a command line), what it means, its type.

    ``kind`` is the type the string converts to: ``str``, ``bool``, ``int``, ``float``, ``list``
    (of numbers) or ``"remaps"`` (comma-separated ``FROM:=TO``). An empty string means "not given":
    the parameter file's value stays.
    """

    default: str
    description: str
    kind: Any = str
    choices: tuple[str, ...] = ()
    length: int = 0  # lists: required number of items (0 = any)


LAUNCH_ARGUMENTS: dict[str, LaunchArgument] = {
    "source": LaunchArgument("bag", "input: 'bag' (bag_player), 'camera' (camera_node) or 'none' (external driver)",
                             choices=("bag", "camera", "none")),
    "bag": LaunchArgument("", "rosbag2 to play when source:=bag"),
    "rate": LaunchArgument("", "bag playback speed factor (source:=bag without lockstep); '' = the params file's",
                           kind=float),
    "lockstep": LaunchArgument("", "true: bag_player waits for each frame's output before the next (drop-free "
                               "evaluation); '' = the params file's", kind=bool),
    "backend": LaunchArgument("", "detector engine: auto, tensorrt, onnxruntime or torch; '' = the params file's",
                              choices=("", "auto", "tensorrt", "onnxruntime", "torch")),
    "camera_extrinsics": LaunchArgument("", "[x, y, z, roll, pitch, yaw] of the camera body frame in base_link (m, rad) "
                                        "when /tf_static has none; '' = the params file's", kind=list, length=6),
    "record": LaunchArgument("", "record the outputs to this new rosbag2 folder; '' = off"),
    "rviz": LaunchArgument("false", "start rviz2 with config/stack.rviz (vehicles only)", kind=bool),
    "params_file": LaunchArgument("", "parameter file; '' = the package's config/stack.yaml"),
    "remap": LaunchArgument("", "comma-separated FROM:=TO topic remappings for every node, "
                            "e.g. /camera/image_raw:=/cam0/image_raw,/odom:=/localization/odom", kind="remaps"),
}


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph."""

    name: str
    executable: str
    enabled_if: dict[str, tuple[str, ...]] = field(default_factory=dict)  # launch arg -> accepted values
    enabled_unless_empty: str = ""  # launch arg that must be non-empty
    respawn: bool = True
    shutdown_on_exit: bool = False  # when it exits, the whole graph stops (a finished or failed bag player)
    arg_params: dict[str, str] = field(default_factory=dict)  # node parameter <- launch argument

    def enabled(self, args: Mapping[str, Any]) -> bool:
        """Whether the node is started for the launch arguments ``args``."""
        for key, accepted in self.enabled_if.items():
            if str(args.get(key, LAUNCH_ARGUMENTS[key].default)) not in accepted:
                return False
        return not self.enabled_unless_empty or args.get(self.enabled_unless_empty) not in (None, "")


_EXTRINSICS = {"camera_extrinsics": "camera_extrinsics"}
NODES: tuple[NodeSpec, ...] = (
    NodeSpec("bag_player", "bag_player", enabled_if={"source": ("bag",)}, respawn=False, shutdown_on_exit=True,
             arg_params={"bag": "bag", "lockstep": "lockstep", "rate": "rate"}),
    NodeSpec("camera_node", "camera_node", enabled_if={"source": ("camera",)}),
    NodeSpec("detector_node", "detector_node", arg_params={"backend": "backend"}),
    NodeSpec("track_buffer_node", "track_buffer_node", arg_params=_EXTRINSICS),
    NodeSpec("tracker_node", "tracker_node", arg_params=_EXTRINSICS),
    NodeSpec("visualizer_node", "visualizer_node"),
    NodeSpec("latency_monitor", "latency_monitor"),
    NodeSpec("bag_recorder", "bag_recorder", enabled_unless_empty="record", respawn=False,
             arg_params={"output": "record"}),
)


@dataclass(frozen=True)
class NodeLaunch:
    """Launch description of one process.

    One process to start: ``package``/``executable`` named ``name``, with typed parameter overrides
    on top of the params file (none for rviz2), the graph's remappings and extra arguments.
    """

    name: str
    package: str
    executable: str
    parameters: dict[str, ParameterValue]
    remaps: tuple[tuple[str, str], ...]
    arguments: tuple[str, ...] = ()
    respawn: bool = True
    shutdown_on_exit: bool = False
    params_file: Path | None = None


@dataclass(frozen=True)
class GraphPlan:
    """What both launchers start, in order."""

    nodes: tuple[NodeLaunch, ...]
    values: dict[str, Any]  # the typed launch argument values


def package_root() -> Path:
    """The folder holding config/, launch/ and models/: the source tree, else the ament share folder.

    ``pip install -e`` (this repository's setup) runs from the source tree; a ``colcon build``
    install keeps them under ``share/ba_perception``.
    """
    source = Path(__file__).resolve().parents[1]
    if (source / "config" / "stack.yaml").is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return source


def default_params_file() -> Path:
    """The shipped parameter file, ``config/stack.yaml``."""
    return package_root() / "config" / "stack.yaml"


def fastdds_profile() -> Path:
    """The shipped Fast DDS profile, ``config/fastdds_profile.xml``."""
    return package_root() / "config" / "fastdds_profile.xml"


def parameter_value(text: str) -> ParameterValue:
    """Parse a ROS parameter value from its command-line text.

    A ROS parameter value from its command-line text, by the YAML rules ``ros2 param set`` and
    ``--ros-args -p`` use: ``true``/``false`` -> bool, ``3`` -> int, ``2.5``/``1e-3`` -> float,
    ``[a, b]`` -> a list of one type (ints and floats mixed -> floats); anything else (a quoted
    scalar, a mapping, an empty or mixed list, invalid YAML) stays the string.
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)  # 1e-3: YAML 1.1 (PyYAML) reads a string, rcl and YAML 1.2 a number
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, bool) for v in value) or all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return value if all(isinstance(v, int) for v in value) else [float(v) for v in value]
    return text


def launch_value(name: str, text: str) -> Any:
    """The typed value of launch argument ``name`` given as ``text`` ('' = not given, returned as '').

    Raises:
        GraphError: unknown argument, or a value that is not of the argument's type or choices.
    """
    if name not in LAUNCH_ARGUMENTS:
        raise GraphError(f"unknown launch argument {name!r}; known: {', '.join(LAUNCH_ARGUMENTS)}")
    arg = LAUNCH_ARGUMENTS[name]
    text = str(text)
    if arg.choices and text not in arg.choices:
        raise GraphError(f"{name}:={text!r}: choose one of {', '.join(c for c in arg.choices if c)}")
    if arg.kind is str:
        return text
    if arg.kind == "remaps":
        return parse_remaps(text)
    if text.strip() == "":
        return ""
    value = parameter_value(text)
    if arg.kind is bool and isinstance(value, bool):
        return value
    if arg.kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if arg.kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if arg.kind is list and isinstance(value, list) and all(isinstance(v, (int, float)) for v in value) \
            and (not arg.length or len(value) == arg.length):
        return [float(v) for v in value]
    expected = {bool: "true or false", int: "an integer", float: "a number",
                list: f"a list of {arg.length or 'some'} numbers like [1.2, 0.0, 1.65, 0.0, 0.0, 0.0]"}[arg.kind]
    raise GraphError(f"{name}:={text!r}: expected {expected}")


def parse_remaps(items: str | Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Parse topic remappings from ``FROM:=TO`` items.

    Topic remappings from ``FROM:=TO`` items, each of which may hold several separated by commas
    (the launch argument ``remap:="a:=b,c:=d"`` and ``ba-perception launch --remap a:=b,c:=d``).

    Raises:
        GraphError: an item that is not ``FROM:=TO`` with both sides non-empty.
    """
    out = []
    for item in [items] if isinstance(items, str) else items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            src, sep, dst = part.partition(":=")
            if not sep or not src.strip() or not dst.strip() or ":=" in dst:
                raise GraphError(f"remap {part!r}: expected FROM:=TO (several separated by commas)")
            out.append((src.strip(), dst.strip()))
    return tuple(out)


def parse_override(item: str) -> tuple[str, str, ParameterValue]:
    """``NODE.PARAM:=VALUE`` -> ``(node, param, typed value)`` (YAML rules, :func:`parameter_value`).

    Raises:
        GraphError: not of that form.
    """
    key, sep, value = item.partition(":=")
    node, dot, param = key.partition(".")
    if not sep or not dot or not node or not param:
        raise GraphError(f"{item!r}: expected NODE.PARAM:=VALUE")
    return node, param, parameter_value(value)


def node_parameters(params_file: Path, node: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Parameters of one node from a ROS 2 parameter YAML, with overrides applied.

    ``ros__parameters`` of ``node`` in a ROS 2 parameter YAML, with ``NODE.PARAM:=VALUE`` overrides
    for that node applied (values parsed as YAML, like ``ros2 run ... -p``); ``{}`` when absent.

    Raises:
        ValueError: an override that is not ``NODE.PARAM:=VALUE``.
    """
    import yaml

    data = yaml.safe_load(Path(params_file).read_text()) or {}
    p = dict((data.get(node) or {}).get("ros__parameters") or {})
    for item in overrides:
        name, param, value = parse_override(item)
        if name == node:
            p[param] = value
    return p


def package_installed(package: str) -> bool:
    """Whether a ROS package is in the ament index (its ``share`` folder is findable)."""
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix(package)
        return True
    except (ImportError, LookupError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return False


def plan_graph(arguments: Mapping[str, str], overrides: Sequence[str] = (), only: Sequence[str] = (),
               share: Path | None = None, check_files: bool = True) -> GraphPlan:
    """The processes of the graph for these launch argument strings: the one function behind both launchers.

    Args:
        arguments: launch argument name -> string (as typed on the command line); missing ones take
            their defaults.
        overrides: ``NODE.PARAM:=VALUE`` parameter overrides (``ba-perception launch --set``).
        only: start only these node names (``ba-perception launch --only``); empty = every enabled node.
        share: folder with ``config/`` (default: :func:`package_root`).
        check_files: check that the bag, params file and rviz2 exist and the record folder does not.

    Returns:
        The node list, each with typed parameter overrides, remappings and respawn policy.

    Raises:
        GraphError: an unknown argument or node, a bad value, or a missing file/package, in one line.
    """
    values = {name: launch_value(name, arguments.get(name, arg.default)) for name, arg in LAUNCH_ARGUMENTS.items()}
    for name in arguments:
        launch_value(name, arguments[name])  # unknown names
    root = Path(share) if share is not None else package_root()
    params_file = Path(values["params_file"]).resolve() if values["params_file"] else root / "config" / "stack.yaml"
    names = {s.name for s in NODES}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise GraphError(f"unknown node(s) {', '.join(unknown)}; nodes: {', '.join(sorted(names))}")
    per_node: dict[str, dict[str, ParameterValue]] = {}
    for item in overrides:
        node, param, value = parse_override(item)
        if node not in names:
            raise GraphError(f"{item!r}: no node {node!r}; nodes: {', '.join(sorted(names))}")
        per_node.setdefault(node, {})[param] = value
    if check_files:
        if not params_file.is_file():
            raise GraphError(f"parameter file {params_file} not found")
        if values["source"] == "bag" and (not values["bag"] or not Path(values["bag"]).exists()):
            raise GraphError(f"bag {values['bag']!r} does not exist (give a rosbag2 to play, or source camera/none)")
        if values["record"] and Path(values["record"]).exists():
            raise GraphError(f"record folder {values['record']!r} exists; give a new folder")
        if values["rviz"] and not package_installed("rviz2"):
            raise GraphError("rviz is true but rviz2 is not installed (apt install ros-$ROS_DISTRO-rviz2); "
                             "nothing was started")
        if importlib.util.find_spec(MSGS_PACKAGE) is None:
            raise GraphError(f"{MSGS_PACKAGE} is not installed; build both packages from the workspace root: "
                             f"{COLCON_BUILD}")
    specs = [s for s in NODES if s.enabled(values) and (not only or s.name in only)]
    nodes = [node_launch(spec, values, [s.name for s in specs], per_node.get(spec.name, {}), params_file)
             for spec in specs]
    remaps = values["remap"]
    if values["rviz"] and not only:
        nodes.append(NodeLaunch("rviz2", "rviz2", "rviz2", {}, remaps, respawn=False,
                                arguments=("-d", str(root / "config" / "stack.rviz"))))
    return GraphPlan(tuple(nodes), values)


def node_launch(spec: NodeSpec, values: Mapping[str, Any], graph: Sequence[str], overrides: Mapping[str, ParameterValue],
                params_file: Path) -> NodeLaunch:
    """Build the process launch of one node.

    The process of one node: ``values`` are typed launch arguments (:func:`launch_value`), ``graph``
    the names of the nodes started with it (the bag player waits until they announce readiness).
    """
    params: dict[str, ParameterValue] = {}
    for param, arg in spec.arg_params.items():
        if values.get(arg, "") != "":
            params[param] = values[arg]
    if spec.name == "bag_player":
        others = [n for n in graph if n != spec.name]
        if others:
            params["wait_for_nodes"] = others
    params.update(overrides)
    return NodeLaunch(spec.name, PACKAGE, spec.executable, params, tuple(values.get("remap") or ()),
                      respawn=spec.respawn, shutdown_on_exit=spec.shutdown_on_exit, params_file=params_file)


def ros_arg_value(value: ParameterValue) -> str:
    """Write a parameter value as ``--ros-args -p`` text that parses back to the same type.

    ``value`` written for ``--ros-args -p name:=<text>`` so that rcl parses it back to the same type
    (strings that would read as another type are quoted).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        return repr(value) if not math.isinf(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(ros_arg_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and parameter_value(text) == text:
        return text
    return "'" + text.replace("'", "''") + "'"  # a single-quoted YAML scalar is always a string
