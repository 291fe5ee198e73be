"""ros2 launch ba_perception stack.launch.py — the whole ba_perception graph on a vehicle.

A thin shell over ba_perception.graph.plan_graph, the function `ba-perception launch` uses too:
it declares the launch arguments, turns their strings into the node list with typed parameter
values (YAML rules: lockstep:=true is a bool, rate:=2 a float, camera_extrinsics:=[...] a list)
and remappings, and refuses an unknown value or a missing rviz2/bag before any node starts.
Parameters come from one file, config/stack.yaml (override with params_file:=...). Crashed nodes
are respawned; when the bag player finishes, the launch shuts down (after DRAIN_S, so the last
frames reach the recorder; at once when it failed).

Examples:
  ros2 launch ba_perception stack.launch.py source:=none backend:=tensorrt rviz:=true
  ros2 launch ba_perception stack.launch.py source:=bag bag:=/data/drive.mcap lockstep:=true
  ros2 launch ba_perception stack.launch.py source:=none \
      remap:="/camera/image_raw:=/cam0/image_raw,/odom:=/localization/odom"
"""

from __future__ import annotations

import os

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
    TimerAction,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ba_perception.graph import (
    DRAIN_S,
    LAUNCH_ARGUMENTS,
    RESPAWN_DELAY_S,
    SIGKILL_TIMEOUT_S,
    SIGTERM_TIMEOUT_S,
    GraphError,
    fastdds_profile,
    plan_graph,
)


def _nodes(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    try:
        plan = plan_graph(values)
    except GraphError as err:  # one line, and no node has been started
        raise RuntimeError(f"ba_perception: {err}") from None
    actions = []
    for spec in plan.nodes:
        parameters = ([str(spec.params_file)] if spec.params_file else []) + ([spec.parameters] if spec.parameters else [])
        node = Node(
            package=spec.package, executable=spec.executable, name=spec.name, output="screen",
            parameters=parameters, remappings=list(spec.remaps), arguments=list(spec.arguments),
            respawn=spec.respawn, respawn_delay=RESPAWN_DELAY_S,
            sigterm_timeout=str(SIGTERM_TIMEOUT_S), sigkill_timeout=str(SIGKILL_TIMEOUT_S),
        )
        actions.append(node)
        if spec.shutdown_on_exit:
            actions.append(RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_stop_graph(spec.name))))
    return actions


def _stop_graph(name: str):
    """When ``name`` (the bag player) ends: stop the graph, after DRAIN_S if it finished cleanly."""

    def on_exit(event, context):
        shutdown = EmitEvent(event=Shutdown(reason=f"{name} finished (exit {event.returncode})"))
        return [TimerAction(period=DRAIN_S, actions=[shutdown])] if event.returncode == 0 else [shutdown]

    return on_exit


def generate_launch_description() -> LaunchDescription:
    profile = str(fastdds_profile())
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=arg.default, description=arg.description)
         for name, arg in LAUNCH_ARGUMENTS.items()]
        + [SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE", profile)),
           SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", profile)),
           OpaqueFunction(function=_nodes)]
    )
