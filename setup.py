"""ament_python package ba_perception: installable with pip (this repo's setup) and colcon (vehicles)."""

from __future__ import annotations

import glob

from setuptools import find_packages, setup

PACKAGE = "ba_perception"

# ROS 2 executables: installed as console scripts and, for launch_ros, under lib/ba_perception/.
NODE_EXECUTABLES: dict[str, str] = {
    "camera_node": "ba_perception.nodes.camera_node:main",
    "bag_player": "ba_perception.nodes.bag_player:main",
    "bag_recorder": "ba_perception.nodes.bag_recorder:main",
    "latency_monitor": "ba_perception.nodes.latency_monitor:main",
    "visualizer_node": "ba_perception.nodes.visualizer_node:main",
    "detector_node": "ba_perception.nodes.detector_node:main",
    "tracker_node": "ba_perception.nodes.tracker_node:main",
    "track_buffer_node": "ba_perception.nodes.track_buffer_node:main",
}

if __name__ == "__main__":
    setup(
        name=PACKAGE,
        version="0.1.0",
        packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
        data_files=[
            ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
            (f"share/{PACKAGE}", ["package.xml"]),
            (f"share/{PACKAGE}/launch", glob.glob("launch/*.py")),
            (f"share/{PACKAGE}/config", glob.glob("config/*")),
            # the detector in both forms: ONNX (TensorRT / ONNX Runtime) and the torch fallback
            (f"share/{PACKAGE}/models", sorted(glob.glob("models/*.onnx") + glob.glob("models/*.pt") + glob.glob("models/*.md"))),
        ],
        install_requires=["setuptools"],
        zip_safe=True,
        maintainer="ba_perception developers",
        maintainer_email="dev@ba-perception.invalid",
        description="Camera-only 3D detection, object bundle adjustment and 3D tracking for ROS 2.",
        license="Apache-2.0",
        python_requires=">=3.10",
        entry_points={
            "console_scripts": [f"{name} = {target}" for name, target in NODE_EXECUTABLES.items()]
            + ["ba-perception = ba_perception.cli:main"],
        },
    )
