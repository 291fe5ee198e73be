#!/usr/bin/env bash
# CI: build this repository as a colcon workspace with the README's vehicle command, then check the
# install from a fresh shell that sources only install/setup.bash. Needs `make setup` first (the
# venv is the ROS 2 underlay here, as /opt/ros/<distro> is on a vehicle). Takes 1-3 min.
#   bash scripts/ci_colcon.sh [WORKDIR]     (default: a new temp folder, removed at the end)
#   bash scripts/ci_colcon.sh --check-only WORKDIR   (only the checks, on an earlier build there)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=$VENV/bin/python
CHECK_ONLY=0
[[ ${1:-} == --check-only ]] && { CHECK_ONLY=1; shift; }
WORK=${1:-$(mktemp -d)}
[[ $# -ge 1 ]] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"
WS=$WORK/ws
T0=$(date +%s)
log() { printf '[ci-colcon] %s\n' "$*"; }

if ((!CHECK_ONLY)); then

# colcon from PyPI, pinned, into its own folder (not the venv) but run by the venv's Python: a
# colcon build installs scripts for the interpreter that runs it. --no-deps: the venv already has
# what colcon needs (catkin-pkg, empy, packaging, setuptools); distlib is the one it lacks.
COLCON_PINS=(colcon-core==0.21.3 colcon-ros==0.5.0 colcon-cmake==0.2.30 colcon-python-setup-py==0.2.9
  colcon-package-selection==0.2.10 colcon-bash==0.5.0 colcon-recursive-crawl==0.2.3 colcon-pkg-config==0.1.0
  colcon-library-path==0.2.1 colcon-test-result==0.3.8 distlib==0.4.4)
TOOLS=$WORK/colcon-tools
"$PY" -m pip install --disable-pip-version-check -q --no-deps --target "$TOOLS" "${COLCON_PINS[@]}" >"$WORK/pip.log" 2>&1 \
  || { cat "$WORK/pip.log"; exit 1; }

# The workspace: src/ba_perception is a copy of this checkout (tracked files, as a clone has them).
rm -rf "$WS"; mkdir -p "$WS/src/ba_perception"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WS/src/ba_perception"

# The exact build command of README "On a vehicle".
BUILD=$(PYTHONPATH=$ROOT "$PY" -c "from ba_perception.graph import COLCON_BUILD; print(COLCON_BUILD)")
grep -qF -- "$BUILD" README.md || { echo "[ci-colcon] README does not give the build command: $BUILD" >&2; exit 1; }
"$PY" scripts/fix_ros_wheel_cmake.py "$VENV" >/dev/null
log "$BUILD"
(cd "$WS" && env PATH="$TOOLS/bin:$VENV/bin:$PATH" PYTHONPATH="$TOOLS" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
   $BUILD >"$WORK/colcon.log" 2>&1) || { tail -40 "$WORK/colcon.log"; cat "$WS"/log/latest_build/*/stderr.log 2>/dev/null | tail -40; exit 1; }
grep -E "^(Finished|Summary)" "$WORK/colcon.log" | sed 's/^/[ci-colcon]   /'
log "build took $(( $(date +%s) - T0 )) s"
fi

# From a fresh shell that sources only install/setup.bash (the venv's Python stands in for the
# system python3 of a vehicle).
env -i HOME="$WORK" PATH=/usr/bin:/bin PY="$PY" WS="$WS" bash -c '
set -eo pipefail
source "$WS/install/setup.bash"  # (colcon'"'"'s setup.bash reads unset variables: no set -u before it)
set -u
cd "$HOME"  # not the repository: python - would import its ba_perception/ from the current folder
fail() { echo "[ci-colcon] FAIL: $*" >&2; exit 1; }
LIB=$WS/install/ba_perception/lib/ba_perception
SHARE=$WS/install/ba_perception/share/ba_perception
for exe in $("$PY" -c "import runpy, sys; print(*runpy.run_path(sys.argv[1])[\"NODE_EXECUTABLES\"])" "$WS/src/ba_perception/setup.py") ba-perception; do
  [[ -x $LIB/$exe ]] || fail "$LIB/$exe missing"
done
for f in launch/stack.launch.py config/stack.yaml config/fastdds_profile.xml config/stack.rviz models/detector.onnx models/detector.pt package.xml; do
  [[ -f $SHARE/$f ]] || fail "$SHARE/$f missing"
done
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$(( (RANDOM % 100) + 100 )) ROS_LOG_DIR=$HOME/ros_log ROS_HOME=$HOME/ros_home
"$PY" - <<PYEOF
import os, signal, subprocess, sys, time
from pathlib import Path
ws = Path(os.environ["WS"]).resolve()
install = ws / "install"

def check(cond, what):
    if not cond:
        sys.exit(f"[ci-colcon] FAIL: {what}")

from ament_index_python.packages import get_packages_with_prefixes
pkgs = get_packages_with_prefixes()
for name in ("ba_perception", "ba_perception_msgs"):
    check(Path(pkgs.get(name, "/")).resolve() == install / name, f"{name} not in the ament index under install/ ({pkgs.get(name)})")
import ba_perception, ba_perception_msgs.msg
check(Path(ba_perception_msgs.msg.__file__).resolve().is_relative_to(install), f"ba_perception_msgs from {ba_perception_msgs.msg.__file__}")
check(Path(ba_perception.__file__).resolve().is_relative_to(install), f"ba_perception from {ba_perception.__file__}")
from ba_perception.data.bag import typestore
check("ba_perception_msgs/msg/Track3DArray" in typestore().types, "the bag typestore lacks the installed .msg types")
from ba_perception.graph import package_root
check(package_root().resolve() == install / "ba_perception/share/ba_perception", f"package_root() = {package_root()}")
lib = install / "ba_perception/lib/ba_perception"
listing = subprocess.run([str(lib / "ba-perception"), "launch", "--list", "source:=none"], capture_output=True, text=True)
check(listing.returncode == 0 and all(l.startswith(str(lib)) for l in listing.stdout.split("\n") if l),
      f"ba-perception launch --list from the install:\n{listing.stdout}{listing.stderr}")

# one node from the install: it gets ready, then stops cleanly on SIGINT
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from ba_perception.graph import READY_TOPIC
from ba_perception.ros.params import qos_profile
rclpy.init()
probe = rclpy.create_node("ci_probe")
ready = []
probe.create_subscription(DiagnosticStatus, READY_TOPIC, lambda m: ready.append(m.hardware_id), qos_profile("reliable_history", 10))
share = install / "ba_perception/share/ba_perception"
node = subprocess.Popen([str(lib / "detector_node"), "--ros-args", "--params-file", str(share / "config/stack.yaml")],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
deadline = time.monotonic() + 180
while "detector_node" not in ready and node.poll() is None and time.monotonic() < deadline:
    rclpy.spin_once(probe, timeout_sec=0.1)
check("detector_node" in ready, f"detector_node from the install did not get ready (exit {node.poll()})")
t0 = time.monotonic()
node.send_signal(signal.SIGINT)
out, _ = node.communicate(timeout=30)
took = time.monotonic() - t0
check(node.returncode == 0 and took < 2.0 and "Traceback" not in out, f"detector_node stop: exit {node.returncode} after {took:.1f} s\n{out}")
print(f"[ci-colcon] install OK: both packages indexed, messages and ba_perception from install/, every executable, "
      f"share files; detector_node from the install got ready and stopped cleanly in {took:.2f} s")
probe.destroy_node()
rclpy.try_shutdown()
PYEOF
'
log "done in $(( $(date +%s) - T0 )) s"
