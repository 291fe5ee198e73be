#!/usr/bin/env bash
# Static checks of the package (run by .ci/run and `make lint`): ruff (ruff.toml) and mypy (mypy.ini).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check ba_perception
.venv/bin/mypy ba_perception
