"""Expose the console scripts under ``<prefix>/lib/ba_perception/`` where launch_ros looks for them,
and register the package in the ament index so ``get_package_share_directory`` finds it.
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
    for name in NODE_EXECUTABLES:
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
    for item in ("package.xml", "launch", "config", "models"):
        link = share / item
        if link.is_symlink() or link.exists():
            if link.is_symlink():
                link.unlink()
            else:
                continue
        link.symlink_to(ROOT / item)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
