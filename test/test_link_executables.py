"""scripts/link_executables.py: the venv looks like an installed ROS package to ros2 run / ros2 launch."""

from __future__ import annotations

import importlib.util
import os
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _linked_prefix(tmp_path: Path) -> Path:
    script = runpy.run_path(str(ROOT / "scripts" / "link_executables.py"), run_name="link_executables")
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    for name in [*script["NODE_EXECUTABLES"], "ba-perception"]:
        (prefix / "bin" / name).write_text("#!/bin/sh\n")
    script["main"](prefix)
    script["main"](prefix)  # idempotent (scripts/setup.sh runs it every time)
    return prefix


def test_launch_file_is_found_by_walking_the_share_folder(tmp_path):
    prefix = _linked_prefix(tmp_path)
    share = prefix / "share" / "ba_perception"
    # ros2launch finds `stack.launch.py` with os.walk over the share folder, which enters no linked folder
    assert (share / "launch").is_dir() and not (share / "launch").is_symlink()
    found = [Path(root, f) for root, _dirs, files in os.walk(share) for f in files if f == "stack.launch.py"]
    assert found == [share / "launch" / "stack.launch.py"]
    assert (share / "config" / "stack.yaml").is_file() and (share / "models" / "detector.pt").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "ba_perception").is_file()
    assert (prefix / "lib" / "ba_perception" / "ba-perception").is_file()


@pytest.mark.skipif(importlib.util.find_spec("ros2launch") is None,
                    reason="ros2launch is not importable: it is on no package registry (apt ROS 2 only)")
def test_ros2launch_finds_the_launch_file(tmp_path, monkeypatch):
    from ros2launch.api import get_share_file_path_from_package

    prefix = _linked_prefix(tmp_path)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    path = get_share_file_path_from_package(package_name="ba_perception", file_name="stack.launch.py")
    assert Path(path) == prefix / "share" / "ba_perception" / "launch" / "stack.launch.py"
