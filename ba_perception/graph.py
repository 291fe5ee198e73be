"""The node graph of the stack, in one place: read by launch/stack.launch.py and `ba-perception launch`.

Each :class:`NodeSpec` names an executable of this package, the launch argument values that
enable it, and its topic remappings. Parameters of every node come from one file,
``config/stack.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = "ba_perception"

# Launch arguments shared by both launchers: name -> (default, description).
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "source": ("bag", "input: 'bag' (bag_player), 'camera' (camera_node) or 'none' (external driver)"),
    "bag": ("", "rosbag2 to play when source:=bag"),
    "lockstep": ("false", "bag_player waits for each frame's output before the next (drop-free evaluation)"),
    "backend": ("auto", "detector engine: auto, tensorrt, onnxruntime or torch"),
    "record": ("", "record the outputs to this new rosbag2 folder; '' = off"),
    "rviz": ("false", "start rviz2 with config/stack.rviz (vehicles only)"),
    "params_file": ("", "parameter file; '' = the package's config/stack.yaml"),
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

    def enabled(self, args: dict[str, str]) -> bool:
        for key, accepted in self.enabled_if.items():
            if args.get(key, LAUNCH_ARGUMENTS[key][0]) not in accepted:
                return False
        return not self.enabled_unless_empty or bool(args.get(self.enabled_unless_empty))


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("bag_player", "bag_player", enabled_if={"source": ("bag",)}, respawn=False, shutdown_on_exit=True,
             arg_params={"bag": "bag", "lockstep": "lockstep"}),
    NodeSpec("camera_node", "camera_node", enabled_if={"source": ("camera",)}),
    NodeSpec("detector_node", "detector_node", arg_params={"backend": "backend"}),
    NodeSpec("track_buffer_node", "track_buffer_node"),
    NodeSpec("tracker_node", "tracker_node"),
    NodeSpec("visualizer_node", "visualizer_node"),
    NodeSpec("latency_monitor", "latency_monitor"),
    NodeSpec("bag_recorder", "bag_recorder", enabled_unless_empty="record", respawn=False,
             arg_params={"output": "record"}),
)


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
    except (ImportError, LookupError):
        return source


def default_params_file() -> Path:
    return package_root() / "config" / "stack.yaml"


def node_parameters(params_file: Path, node: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``ros__parameters`` of ``node`` in a ROS 2 parameter YAML, with ``NODE.PARAM:=VALUE`` overrides
    for that node applied (values parsed as YAML, like ``ros2 run ... -p``); ``{}`` when absent.

    Raises:
        ValueError: an override that is not ``NODE.PARAM:=VALUE``.
    """
    import yaml

    data = yaml.safe_load(Path(params_file).read_text()) or {}
    p = dict((data.get(node) or {}).get("ros__parameters") or {})
    for item in overrides:
        key, sep, value = item.partition(":=")
        name, dot, param = key.partition(".")
        if not sep or not dot or not param:
            raise ValueError(f"{item!r}: expected NODE.PARAM:=VALUE")
        if name == node:
            p[param] = yaml.safe_load(value)
    return p


def fastdds_profile() -> Path:
    return package_root() / "config" / "fastdds_profile.xml"
