#!/usr/bin/env bash
# Set up ba_perception from nothing into ./.venv: Debian packages, pinned pip packages, the
# ba_perception_msgs build (rosidl) and the ba_perception package. Idempotent: every step is
# skipped when its inputs are unchanged, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMPS=$VENV/.stamps
PY=${PYTHON:-python3}

log() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

# 1. Debian packages: EGL/Mesa for offscreen rendering, car meshes for the synthetic world
#    (trigger-rally-data; torcs-data, converted from AC3D with assimp-utils in step 5).
APT_PKGS=(libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri trigger-rally-data torcs-data assimp-utils)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Virtual environment and pinned Python packages.
[[ -x $VENV/bin/python ]] || { log "creating $VENV"; $PY -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
h=$(hash_of requirements.txt constraints.txt)
if ! stamp_ok pip "$h"; then
  log "pip install -r requirements.txt (pinned by constraints.txt)"
  "${PIP[@]}" install -r requirements.txt -c constraints.txt
  # trackeval declares old numpy pins; it works on numpy 2, so install it alone.
  "${PIP[@]}" install --no-deps trackeval==1.3.0
  stamp_set pip "$h"
fi

# 3. ba_perception_msgs with rosidl into the venv (the venv is the ROS underlay).
h=$(hash_of ba_perception_msgs/CMakeLists.txt ba_perception_msgs/package.xml ba_perception_msgs/msg/*.msg requirements.txt)
if ! stamp_ok msgs "$h" || ! "$VENV/bin/python" -c "import ba_perception_msgs.msg" 2>/dev/null; then
  log "building ba_perception_msgs"
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  "$VENV/bin/python" scripts/fix_ros_wheel_cmake.py "$VENV"
  BUILD=$ROOT/build/ba_perception_msgs
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  (cd "$BUILD" && PATH=$VENV/bin:$PATH cmake "$ROOT/ba_perception_msgs" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" -DCMAKE_BUILD_TYPE=Release >cmake.log 2>&1 \
    && PATH=$VENV/bin:$PATH make -j"$(nproc)" install >make.log 2>&1) \
    || { tail -30 "$BUILD"/*.log; echo "[setup] message build failed (logs in $BUILD)" >&2; exit 1; }
  "$VENV/bin/python" -c "import ba_perception_msgs.msg" \
    || { echo "[setup] ba_perception_msgs built but does not import" >&2; exit 1; }
  stamp_set msgs "$h"
fi

# 4. ba_perception itself (editable), and its executables under lib/ba_perception/ for launch_ros.
h=$(hash_of setup.py setup.cfg package.xml)
if ! stamp_ok pkg "$h" || [[ ! -x $VENV/bin/ba-perception ]]; then
  log "installing ba_perception (editable)"
  "${PIP[@]}" install --no-deps --no-build-isolation -e .
  stamp_set pkg "$h"
fi
"$VENV/bin/python" scripts/link_executables.py "$VENV"

# 5. TORCS car meshes converted once (AC3D -> OBJ + PNG) into $VENV/share/ba_perception/torcs
#    (never committed; the conversion skips cars already converted).
"$VENV/bin/python" -W ignore::RuntimeWarning -m ba_perception.data.world.meshes --convert-torcs | sed 's/^/[setup] /'
log "ready: $VENV ($(du -sh "$VENV" | cut -f1))"
