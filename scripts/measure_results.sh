#!/usr/bin/env bash
# Re-measure every row of README's results table and regenerate it: each command writes its JSON
# into docs/results/, then `ba-perception results-doc` rewrites the table. Takes about an hour on a
# 2-core CPU (rendering and detection of the splits are cached under data/ for the next run).
# Usage: bash scripts/measure_results.sh [ROW...]   rows: det oba track pipeline stack (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}
export FASTRTPS_DEFAULT_PROFILES_FILE=$PWD/config/fastdds_profile.xml
BP=.venv/bin/ba-perception
R=docs/results
mkdir -p "$R"
rows=("$@")
((${#rows[@]})) || rows=(det oba track pipeline stack)
for row in "${rows[@]}"; do
  echo "[measure] $row"
  case $row in
    det) $BP eval-det --out $R/eval_det.json ;;
    oba) $BP eval-oba --split test --variants single klt oracle --out $R/eval_oba_test.json ;;
    track) $BP eval-track --split test --out $R/eval_track_test.json ;;
    pipeline) $BP bench pipeline --observations world --out $R/bench_pipeline.json ;;
    stack) $BP bench stack --rates 10,15 --out $R/bench_stack.json ;;
    *) echo "unknown row $row (det oba track pipeline stack)" >&2; exit 2 ;;
  esac
done
$BP results-doc --write README.md
