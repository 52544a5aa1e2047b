#!/usr/bin/env bash
# One GPU session's worth of checks (see /work/.library/device): CUDA correctness tests, then the
# 1 mm (197 x 233 x 189) affine and deformable registrations timed on the GPU, then batched
# registration throughput (pairs per minute for B = 1, 4, 16 at 2 mm and 1 mm). Writes the tables
# into benchmarks/RESULTS.md and copies it (and the logs) to $OUT when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e ".[dev]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m pytest -q tests/test_cuda.py tests/test_warp.py tests/test_mi_gradients.py 2>&1 | tee "${OUT:-/tmp}/cuda_tests.log" | tail -5
python3 benchmarks/registration.py --cases affine,deformable --quick --methods miregister \
    --deformable bspline,bspline-linear --device cuda --resolution 1.0 2>&1 | tee "${OUT:-/tmp}/gpu_registration.log" | tail -30
python3 -m pytest -q tests/test_batch.py 2>&1 | tee "${OUT:-/tmp}/batch_tests.log" | tail -3 || true  # on the GPU when there is one
# Capped so that a slow step cannot take the session's remaining device time; the table is
# written row by row to the log, and into RESULTS.md when the script completes.
timeout 300 python3 benchmarks/batch_throughput.py --device cuda --batch-sizes 1,4,16 --resolutions 2,1 2>&1 \
    | tee "${OUT:-/tmp}/batch_throughput.log" | tail -12 || echo "batch_throughput did not complete (see its log)"
cp benchmarks/RESULTS.md "${OUT:-/tmp}/RESULTS.md"
