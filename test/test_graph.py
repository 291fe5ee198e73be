"""The one graph description behind both launchers: launch arguments become typed node parameters,
remaps parse the same for both, a bad argument is one clear error before anything starts."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from ba_perception.graph import (
    LAUNCH_ARGUMENTS,
    NODES,
    GraphError,
    parameter_value,
    parse_remaps,
    plan_graph,
    ros_arg_value,
)
from ba_perception.launcher import add_arguments, command_line, launch_arguments

ROOT = Path(__file__).resolve().parents[1]
# A value for every launch argument that is not a plain string, and the type it must reach the node as.
TYPED = {"lockstep": ("true", bool), "rviz": ("false", bool), "rate": ("2", float),
         "camera_extrinsics": ("[1.2, 0, 1.65, 0, 0, 0.1]", list)}


@pytest.fixture
def bag_args(tmp_path) -> dict[str, str]:
    bag = tmp_path / "drive.mcap"
    bag.write_bytes(b"")
    return {"source": "bag", "bag": str(bag), "record": str(tmp_path / "out")}


def test_every_typed_launch_argument_is_covered():
    typed = {name for name, arg in LAUNCH_ARGUMENTS.items() if arg.kind not in (str, "remaps")}
    assert typed == set(TYPED)


@pytest.mark.parametrize("text,value", [
    ("true", True), ("False", False), ("3", 3), ("-2", -2), ("2.5", 2.5), ("1e-3", 1e-3), ("2", 2),
    ("[1, 2]", [1, 2]), ("[1, 2.5]", [1.0, 2.5]), ("[true, false]", [True, False]), ("[a, b]", ["a", "b"]),
    ("hello", "hello"), ("'true'", "true"), ("/data/drive.mcap", "/data/drive.mcap"), ("", ""),
    ("[]", "[]"), ("[1, a]", "[1, a]"), ("{a: 1}", "{a: 1}")])
def test_parameter_value_follows_yaml_rules(text, value):
    got = parameter_value(text)
    assert got == value and type(got) is type(value)


def test_typed_arguments_reach_the_nodes_as_their_types(bag_args):
    plan = plan_graph({**bag_args, **{k: v for k, (v, _) in TYPED.items() if k != "rviz"}})
    nodes = {n.name: n for n in plan.nodes}
    assert nodes["bag_player"].parameters["lockstep"] is True
    assert nodes["bag_player"].parameters["rate"] == 2.0 and type(nodes["bag_player"].parameters["rate"]) is float
    for name in ("track_buffer_node", "tracker_node"):
        assert nodes[name].parameters["camera_extrinsics"] == [1.2, 0.0, 1.65, 0.0, 0.0, 0.1]
        assert all(type(v) is float for v in nodes[name].parameters["camera_extrinsics"])
    assert nodes["bag_recorder"].parameters["output"] == bag_args["record"]
    assert nodes["bag_player"].parameters["wait_for_nodes"] == [n for n in nodes if n != "bag_player"]


def test_unset_arguments_leave_the_params_file_values():
    plan = plan_graph({"source": "none"})
    assert all(not n.parameters for n in plan.nodes)
    assert [n.name for n in plan.nodes] == [s.name for s in NODES if s.name not in ("bag_player", "camera_node",
                                                                                      "bag_recorder")]


@pytest.mark.dds
def test_the_project_launcher_command_delivers_the_same_types(bag_args, ros_env):
    """rclpy parses the `-p` values of the launcher's command lines back to the plan's typed values."""
    import rclpy
    from rclpy.node import Node

    plan = plan_graph({**bag_args, **{k: v for k, (v, _) in TYPED.items() if k != "rviz"}, "backend": "torch"},
                      overrides=["bag_player.topics:=[/a, /b]", "bag_recorder.output:='2024'", "detector_node.x:=a b"])
    ros_env.node("init")  # a private context on this test's domain
    for node in plan.nodes:
        cmd = command_line(node)
        args = cmd[cmd.index("--ros-args"):]
        args = [a for i, a in enumerate(args) if a != "--params-file" and (i == 0 or args[i - 1] != "--params-file")]
        probe = Node(node.name, context=ros_env.context, cli_args=args, allow_undeclared_parameters=True,
                     automatically_declare_parameters_from_overrides=True)
        try:
            for key, value in node.parameters.items():
                got = probe.get_parameter(key).value
                assert got == value and type(got) is type(value), (node.name, key, got, value)
                if isinstance(value, list):
                    assert [type(v) for v in got] == [type(v) for v in value]
        finally:
            probe.destroy_node()
    assert rclpy.ok(context=ros_env.context)


@pytest.mark.dds
def test_strings_that_look_like_other_types_stay_strings_on_the_command_line(ros_env):
    from rclpy.node import Node

    from ba_perception.graph import NodeLaunch

    values = ["true", "2024", "a b", "x,y", "", "1e-3", "[1]", "it's", "-", "/data/run 1.mcap", "{a: 1}"]
    launch = NodeLaunch("probe", "ba_perception", "detector_node", {f"s{i}": v for i, v in enumerate(values)}, ())
    cmd = command_line(launch)
    ros_env.node("init")
    probe = Node("probe", context=ros_env.context, cli_args=cmd[cmd.index("--ros-args"):],
                 allow_undeclared_parameters=True, automatically_declare_parameters_from_overrides=True)
    try:
        assert [probe.get_parameter(f"s{i}").value for i in range(len(values))] == values
    finally:
        probe.destroy_node()


def test_remaps_parse_the_same_for_both_launchers():
    text = "/camera/image_raw:=/cam0/image_raw, /odom:=/localization/odom"
    expected = (("/camera/image_raw", "/cam0/image_raw"), ("/odom", "/localization/odom"))
    assert plan_graph({"source": "none", "remap": text}).nodes[0].remaps == expected  # ros2 launch remap:=...
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv in (["--source", "none", "--remap", text], [f"remap:={text}", "source:=none"],
                 ["--source", "none", "--remap", "/camera/image_raw:=/cam0/image_raw", "--remap", "/odom:=/localization/odom"]):
        plan = plan_graph(launch_arguments(parser.parse_args(argv)))
        assert all(n.remaps == expected for n in plan.nodes), argv
    assert command_line(plan.nodes[0])[-4:] == ["-r", "/camera/image_raw:=/cam0/image_raw", "-r",
                                                "/odom:=/localization/odom"]


@pytest.mark.parametrize("arguments,message", [
    ({"sorce": "bag"}, "unknown launch argument 'sorce'"),
    ({"source": "webcam"}, "source:='webcam': choose one of bag, camera, none"),
    ({"source": "none", "lockstep": "yes please"}, "lockstep:='yes please': expected true or false"),
    ({"source": "none", "rate": "fast"}, "rate:='fast': expected a number"),
    ({"source": "none", "camera_extrinsics": "[1, 2]"}, "camera_extrinsics:='[1, 2]': expected a list of 6 numbers"),
    ({"source": "none", "backend": "tensorflow"}, "backend:='tensorflow': choose one of"),
    ({"source": "none", "remap": "/a:=/b,/c"}, "remap '/c': expected FROM:=TO"),
    ({"source": "none", "rviz": "true"}, "rviz2 is not installed"),
    ({"source": "bag", "bag": "/nonexistent.mcap"}, "does not exist"),
    ({"source": "none", "params_file": "/nonexistent.yaml"}, "parameter file /nonexistent.yaml not found"),
])
def test_bad_arguments_are_one_clear_error(arguments, message):
    with pytest.raises(GraphError) as err:
        plan_graph(arguments)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_remap_errors():
    with pytest.raises(GraphError):
        parse_remaps(":=/b")
    assert parse_remaps(["/a:=/b,", " ,/c:=/d"]) == (("/a", "/b"), ("/c", "/d"))


launch_ros_missing = importlib.util.find_spec("launch_ros") is None


@pytest.mark.skipif(launch_ros_missing, reason="launch_ros is not importable: it is on no package registry "
                    "(apt ROS 2 only); the launch file is exercised on a vehicle")
@pytest.mark.dds
def test_launch_file_builds_its_nodes_with_typed_parameters(bag_args, ros_env):
    """stack.launch.py under the real launch / launch_ros: the nodes, parameter files with typed values."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch_ros.actions import Node
    from rclpy.node import Node as RclNode

    desc = get_launch_description_from_python_launch_file(str(ROOT / "launch" / "stack.launch.py"))
    context = LaunchContext()
    given = {**bag_args, "lockstep": "true", "rate": "2", "camera_extrinsics": "[1.2, 0, 1.65, 0, 0, 0.1]",
             "remap": "/odom:=/loc/odom,/camera/image_raw:=/cam0/image_raw"}
    context.launch_configurations.update(given)
    for entity in desc.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
    opaque = [e for e in desc.entities if isinstance(e, OpaqueFunction)]
    nodes = [a for e in opaque for a in (e.execute(context) or []) if isinstance(a, Node)]
    assert [n.node_executable for n in nodes] == [n.name for n in plan_graph(given).nodes]
    ros_env.node("init")
    for node in nodes:
        node._perform_substitutions(context)
        files = [path for path, is_file in node._Node__expanded_parameter_arguments if is_file]
        # what rcl makes of the parameter files launch_ros wrote (the node's view)
        probe = RclNode(node.node_executable, context=ros_env.context,
                        cli_args=["--ros-args", *[a for f in files for a in ("--params-file", f)]],
                        allow_undeclared_parameters=True, automatically_declare_parameters_from_overrides=True)
        try:
            params = {p.name: p.value for p in probe._parameters.values()}
        finally:
            probe.destroy_node()
        if node.node_executable == "bag_player":
            assert params["lockstep"] is True and params["rate"] == 2.0 and type(params["rate"]) is float
            assert list(params["wait_for_nodes"]) == [n.node_executable for n in nodes][1:]
        if node.node_executable == "tracker_node":
            assert list(params["camera_extrinsics"]) == [1.2, 0.0, 1.65, 0.0, 0.0, 0.1]
        assert node.expanded_remapping_rules == [("/odom", "/loc/odom"), ("/camera/image_raw", "/cam0/image_raw")]


@pytest.mark.skipif(launch_ros_missing, reason="launch_ros is not importable: it is on no package registry")
def test_launch_file_refuses_rviz_without_rviz2_before_any_node():
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    desc = get_launch_description_from_python_launch_file(str(ROOT / "launch" / "stack.launch.py"))
    context = LaunchContext()
    context.launch_configurations.update({"source": "none", "rviz": "true"})
    for entity in desc.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.visit(context)
    opaque = [e for e in desc.entities if isinstance(e, OpaqueFunction)]
    with pytest.raises(RuntimeError, match="rviz2 is not installed"):
        opaque[0].execute(context)


def test_a_workspace_built_without_the_messages_stops_before_any_node(monkeypatch):
    """`colcon build` without --base-paths builds only ba_perception: say how to build both, start nothing."""
    import ba_perception.graph as graph

    real = importlib.util.find_spec
    monkeypatch.setattr(graph.importlib.util, "find_spec",
                        lambda name, *a: None if name == graph.MSGS_PACKAGE else real(name, *a))
    with pytest.raises(GraphError) as err:
        plan_graph({"source": "none"})
    assert graph.COLCON_BUILD in str(err.value)
