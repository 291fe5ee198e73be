#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU: the CUDA tests, then the detector, object-BA
# and in-process pipeline benchmarks. Usage: scripts/gpu_bench.sh [OUT_DIR] (default out/gpu).
# Everything is written under OUT_DIR: log.txt (all output), pytest.txt and the benches' JSON.
set -u -o pipefail
cd "$(dirname "$0")/.."
out=${1:-out/gpu}
# The project's venv when set up with `make setup` (that installs CPU torch: on a GPU machine point
# PYTHON at an interpreter whose torch has CUDA, with requirements.txt installed next to it).
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
py=${PYTHON:-python3}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
step() { echo; echo "=== $* ($(date +%T))"; }
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
"$py" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "python", platform.python_version())'
step "CUDA tests"
"$py" -m pytest -q -p no:cacheprovider -rs test/core/test_oba_cuda.py test/core/test_detection_backends.py \
    test/core/test_oba_refine.py 2>&1 | tee "$out/pytest.txt"
step "bench detector"
"$py" -m ba_perception.cli bench detector --iters 100 --out "$out/detector.json"
step "bench oba"
"$py" -m ba_perception.cli bench oba --compile --profile --out "$out/oba.json"
step "bench pipeline (world observations, 30 objects)"
"$py" -m ba_perception.cli bench pipeline --device cuda --observations world --objects 30 --out "$out/pipeline_world.json"
step "bench pipeline (world observations, 30 objects, object-BA iteration fused by torch.compile)"
"$py" -m ba_perception.cli bench pipeline --device cuda --observations world --objects 30 --compile-ba --warmup 20 --out "$out/pipeline_world_compiled.json"
step "done"
