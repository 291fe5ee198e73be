"""ros2 launch ba_perception stack.launch.py — the whole ba_perception graph on a vehicle.

The node list, the launch arguments and which nodes each argument enables come from
ba_perception/graph.py, which `ba-perception launch` reads too; parameters come from one file,
config/stack.yaml (override with params_file:=...). Crashed nodes are respawned; when the bag
player finishes, the launch shuts down.

Examples:
  ros2 launch ba_perception stack.launch.py source:=camera \
      camera_node.source:=v4l2:/dev/video0   # (set in the params file)
  ros2 launch ba_perception stack.launch.py source:=none backend:=tensorrt rviz:=true
  ros2 launch ba_perception stack.launch.py source:=bag bag:=/data/drive.mcap lockstep:=true
Remap camera/odometry topics with the launch argument `remap`, e.g.
  remap:="/camera/image_raw:=/cam0/image_raw,/odom:=/localization/odom"
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ba_perception.graph import LAUNCH_ARGUMENTS, NODES, PACKAGE


def _nodes(context, *args, **kwargs):
    share = get_package_share_directory(PACKAGE)
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    params_file = values["params_file"] or os.path.join(share, "config", "stack.yaml")
    remaps = [tuple(r.split(":=", 1)) for r in LaunchConfiguration("remap").perform(context).split(",") if ":=" in r]
    actions = []
    for spec in NODES:
        if not spec.enabled(values):
            continue
        overrides = {param: values[arg] for param, arg in spec.arg_params.items() if values[arg] != ""}
        node = Node(
            package=PACKAGE, executable=spec.executable, name=spec.name, output="screen",
            parameters=[params_file, overrides] if overrides else [params_file],
            remappings=remaps, respawn=spec.respawn, respawn_delay=1.0,
        )
        actions.append(node)
        if spec.shutdown_on_exit:
            actions.append(RegisterEventHandler(OnProcessExit(
                target_action=node, on_exit=[EmitEvent(event=Shutdown(reason=f"{spec.name} finished"))])))
    if values["rviz"].lower() == "true":
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                            arguments=["-d", os.path.join(share, "config", "stack.rviz")]))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    profile = os.path.join(share, "config", "fastdds_profile.xml")
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc)
         for name, (default, desc) in LAUNCH_ARGUMENTS.items()]
        + [DeclareLaunchArgument("remap", default_value="", description="comma-separated FROM:=TO topic remappings"),
           SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE", profile)),
           SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", profile)),
           OpaqueFunction(function=_nodes)]
    )
