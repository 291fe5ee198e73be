"""Rewrite the builder's Python/numpy include paths baked into the ROS message wheels' CMake exports.

The PyPI ROS 2 wheels export CMake files that point at the wheel builder's interpreter (paths
containing ``cp3NN-cp3NN``); rosidl needs this interpreter's. Idempotent.
"""

from __future__ import annotations

import pathlib
import re
import sys
import sysconfig

import numpy

PY_INCLUDE = sysconfig.get_paths()["include"]
NP_INCLUDE = numpy.get_include()
# A foreign include folder: any absolute path containing cpNNN-cpNNN that ends in an include dir.
_FOREIGN = re.compile(r"(/[^\s;\"']*cp3\d+-cp3\d+[^\s;\"']*?/(?:include/python3\.\d+|numpy/(?:_core|core)/include))")


def fix(prefix: pathlib.Path) -> int:
    changed = 0
    for path in prefix.glob("share/**/*.cmake"):
        text = path.read_text(errors="surrogateescape")
        if "cp3" not in text:
            continue

        def repl(m: re.Match[str]) -> str:
            return NP_INCLUDE if "numpy" in m.group(1) else PY_INCLUDE

        new = _FOREIGN.sub(repl, text)
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed += 1
    return changed


if __name__ == "__main__":
    n = fix(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
    print(f"fix_ros_wheel_cmake: rewrote {n} file(s)")
