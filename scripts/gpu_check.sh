#!/usr/bin/env bash
# The checks that need a GPU, in one go: build the CUDA kernels, run the GPU tests (the LIF,
# fused batch-norm + LIF and pair kernels against their PyTorch references, opcheck,
# torch.compile, the area stack with the fused op against the composition, a CUDA training run
# with --amp), then the benchmarks. Logs and results go to OUT_DIR (default gpu-check/).
#
#   bash scripts/gpu_check.sh [OUT_DIR] [extra pytest arguments]
#
# Run it in an environment with tdsnn and its test extra installed (`source scripts/setup.sh
# test`). Exits non-zero if the kernels do not build or a GPU test fails; the benchmarks run
# either way.
set -uo pipefail
out=${1:-gpu-check}
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TDSNN_REQUIRE_KERNELS=1
python -m tdsnn info --build-kernels --verbose >"$out/build.log" 2>&1
build=$?
tail -n 25 "$out/build.log"
python -m pytest -m gpu -q -p no:cacheprovider "$@" 2>&1 | tee "$out/gpu-tests.log" | tail -n 30
tests=${PIPESTATUS[0]}
python -m tdsnn bench --out "$out" 2>&1 | tee "$out/bench.log" | tail -n 60
echo "build exit $build, GPU tests exit $tests"
[ "$build" -eq 0 ] && [ "$tests" -eq 0 ]
