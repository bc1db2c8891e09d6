#!/usr/bin/env bash
# The GPU checks of benchmarks/RESULTS.md in one command, on a CUDA machine whose Python has
# torch, h5py, scipy, matplotlib, pyyaml and pytest (no network needed):
#
#     DIR=RESULTS bash benchmarks/gpu_checks.sh [PART ...]
#
# PART: tests bench train ddp record evaluate paper graphs (default: all, in that order; record
# and evaluate use the run that train makes). tests: the kernels' build and `pytest -m gpu`
# (every kernel against its PyTorch reference, opcheck, gradcheck, torch.compile, --amp and
# --cuda-graphs training); bench: `tdsnn bench` with every suite, the GPU table of
# benchmarks/RESULTS.md in one run. Logs and JSON land in $DIR; a short summary of each part is
# printed last. Exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${DIR:-gpu-checks}
mkdir -p "$DIR"
export TDSNN_CACHE=${TDSNN_CACHE:-/tmp/tdsnn-cache} PYTHONUNBUFFERED=1 TDSNN_KERNELS=cuda
export TDSNN_REQUIRE_KERNELS=1  # a kernel that does not build fails the GPU tests
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/tdsnn-gpu-runs}
mkdir -p "$RUNS"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests bench train ddp record evaluate paper graphs)
failed=0

timed() {  # timed NAME CMD...: run CMD, log to $DIR/NAME.log, note its wall time
    local name=$1 start rc
    shift
    echo "== $name: $*"
    start=$(date +%s.%N)
    "$@" >"$DIR/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || failed=1
    awk -v n="$name" -v rc="$rc" -v s="$start" -v e="$(date +%s.%N)" \
        'BEGIN { printf "%s\trc=%s\t%.1f s\n", n, rc, e - s }' | tee -a "$DIR/summary.tsv"
    tail -n 3 "$DIR/$name.log"
}

for part in "${parts[@]}"; do
    case $part in
    tests)
        $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())' \
            >"$DIR/device.txt"
        timed build $PY -m tdsnn info --build-kernels
        timed gpu-tests $PY -m pytest -m gpu -q -p no:cacheprovider -rs --continue-on-collection-errors
        ;;
    bench)  # lif, pairs, step (with tdsnn-graphed) and cpu-step: the issue's GPU table
        timed bench $PY -m tdsnn bench --device cuda --out "$DIR/bench"
        ;;
    train)  # the default run on the GPU; its training images/s against the bare step's
        rm -rf "$RUNS/default"
        timed train $PY -m tdsnn train --area-stack v1-v4-it --device cuda --quiet \
            --out "$RUNS/default"
        cp "$RUNS/default/summary.json" "$DIR/train-summary.json"
        timed default-step $PY benchmarks/train_step.py --topo none,stc --device cuda \
            --steps 100 --json "$DIR/default-step.json"
        ;;
    ddp)  # torchrun with NCCL on the one GPU there is
        rm -rf "$RUNS/ddp"
        timed ddp $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m tdsnn train \
            --area-stack v1-v4-it --device cuda --epochs 1 --quiet --out "$RUNS/ddp"
        ;;
    record)
        timed record-bench $PY benchmarks/record.py --run "$RUNS/default" --device cuda \
            --repeats 7 --out "$DIR/record.json"
        rm -f "$RUNS/gratings.h5"
        timed record $PY -m tdsnn record "$RUNS/default" --stimuli gratings --membrane \
            --device cuda --out "$RUNS/gratings.h5" --quiet
        ;;
    evaluate)
        rm -rf "$RUNS/evaluate"
        timed evaluate $PY -m tdsnn evaluate "$RUNS/default" --device cuda --quiet \
            --out "$RUNS/evaluate"
        cp "$RUNS/evaluate/metrics.json" "$DIR/evaluate-metrics.json"
        ;;
    paper)  # the paper-sized step with and without bf16 autocast, then a short real run
        for amp in "" --amp; do
            timed "paper-step${amp}" $PY benchmarks/train_step.py \
                --config configs/paper-resnet18.yaml --topo none,stc --device cuda --steps 20 \
                $amp --json "$DIR/paper-step${amp}.json"
        done
        rm -rf "$RUNS/paper"
        timed paper-train $PY -m tdsnn train --config configs/paper-resnet18.yaml \
            --dataset shapes --train-size 6400 --test-size 512 --epochs 1 --device cuda \
            --quiet --out "$RUNS/paper"
        cp "$RUNS/paper/summary.json" "$DIR/paper-summary.json"
        ;;
    graphs)  # --cuda-graphs against the eager step: small models (banked and reference
        # clusters, one optimiser), then the step suite's size (tdsnn-graphed beside the others)
        timed cuda-graphs $PY benchmarks/cuda_graphs.py --json "$DIR/cuda-graphs.json"
        timed bench-step $PY -m tdsnn bench --device cuda --suite step --out "$DIR/bench-step"
        ;;
    *)
        echo "unknown part $part (tests bench train ddp record evaluate paper graphs)" >&2
        exit 2
        ;;
    esac
done
echo "== summary"
cat "$DIR/summary.tsv"
exit $failed
