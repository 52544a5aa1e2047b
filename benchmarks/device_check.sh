#!/usr/bin/env bash
# One GPU session's worth of checks (see /work/.library/device): CUDA correctness tests, then the
# 1 mm (197 x 233 x 189) affine and deformable registrations timed on the GPU. Writes the table
# into benchmarks/RESULTS.md and copies it (and the logs) to $OUT when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[dev]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m pytest -q tests/test_cuda.py tests/test_warp.py tests/test_mi_gradients.py 2>&1 | tee "${OUT:-/tmp}/cuda_tests.log" | tail -5
python3 benchmarks/registration.py --cases affine,deformable --quick --methods miregister \
    --deformable bspline,bspline-linear --device cuda --resolution 1.0 2>&1 | tee "${OUT:-/tmp}/gpu_registration.log" | tail -30
cp benchmarks/RESULTS.md "${OUT:-/tmp}/RESULTS.md"
