"""Expose the console scripts under ``<prefix>/lib/ba_perception/`` where launch_ros looks for them,
register the package in the ament index so ``get_package_share_directory`` finds it, and link
``package.xml``, ``config/``, ``models/`` and the launch file into ``<prefix>/share/ba_perception/``
(what ``colcon build`` installs), so ``ros2 launch ba_perception stack.launch.py`` works from the venv.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from setup import NODE_EXECUTABLES  # noqa: E402


def main(prefix: pathlib.Path) -> None:
    lib = prefix / "lib" / "ba_perception"
    lib.mkdir(parents=True, exist_ok=True)
    for name in [*NODE_EXECUTABLES, "ba-perception"]:  # also `ros2 run ba_perception ba-perception ...`
        target, link = prefix / "bin" / name, lib / name
        if not target.exists():
            raise SystemExit(f"link_executables: {target} is missing; reinstall the package")
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True, exist_ok=True)
    (index / "ba_perception").touch()
    share = prefix / "share" / "ba_perception"
    share.mkdir(parents=True, exist_ok=True)
    for item in ("package.xml", "config", "models"):
        _link(share / item, ROOT / item)
    # ros2launch looks for the launch file with os.walk, which does not enter a linked folder:
    # share/ba_perception/launch is a real folder holding a link to each launch file.
    launch = share / "launch"
    if launch.is_symlink():
        launch.unlink()
    launch.mkdir(exist_ok=True)
    for path in sorted((ROOT / "launch").glob("*.py")):
        _link(launch / path.name, path)


def _link(link: pathlib.Path, target: pathlib.Path) -> None:
    """Make ``link`` point at ``target``; a real file or folder already there is left alone."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        return
    link.symlink_to(target)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
