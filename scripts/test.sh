#!/usr/bin/env bash
# The project's test command (README command 2, called by .ci/run): the whole pytest suite with
# ROS 2 isolated to this host and a private domain.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}
export ROS_HOME=${ROS_HOME:-$(mktemp -d)} ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d)}
export FASTRTPS_DEFAULT_PROFILES_FILE=$PWD/config/fastdds_profile.xml
exec .venv/bin/python -m pytest "$@"
