#!/usr/bin/env bash
# Create (or reuse) a virtual environment with tdsnn installed, then put it first on PATH.
#
#   source scripts/setup.sh          # core dependencies
#   source scripts/setup.sh test     # plus the test extra (pytest, snntorch, spikingjelly, ruff)
#
# The environment lives in $TDSNN_VENV (default: .venv in the repository). Dependencies are
# installed once per (pyproject.toml, constraints.txt, extra); tdsnn itself is re-linked each time.
# pip's own output goes to $TDSNN_VENV/install.log and is shown only if a step fails.
set -euo pipefail
tdsnn_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tdsnn_extra=${1:-}
TDSNN_VENV=${TDSNN_VENV:-$tdsnn_root/.venv}
tdsnn_log="$TDSNN_VENV/install.log"

tdsnn_logged() {
    if ! "$@" >>"$tdsnn_log" 2>&1; then
        echo "tdsnn setup: this step failed; the end of $tdsnn_log:" >&2
        tail -n 30 "$tdsnn_log" >&2
        return 1
    fi
}

if [ ! -x "$TDSNN_VENV/bin/python" ]; then
    echo "Creating the virtual environment $TDSNN_VENV ..."
    python3 -m venv "$TDSNN_VENV"
fi
tdsnn_key=$(cat "$tdsnn_root/pyproject.toml" "$tdsnn_root/constraints.txt" | sha256sum | cut -c1-16)
tdsnn_stamp="$TDSNN_VENV/.deps-$tdsnn_key-${tdsnn_extra:-core}"
tdsnn_spec="$tdsnn_root"
[ -n "$tdsnn_extra" ] && tdsnn_spec="$tdsnn_root[$tdsnn_extra]"
if [ ! -f "$tdsnn_stamp" ]; then
    echo "Installing tdsnn and its dependencies${tdsnn_extra:+ (extra: $tdsnn_extra)}; the first run downloads PyTorch ..."
    : >"$tdsnn_log"
    tdsnn_logged "$TDSNN_VENV/bin/python" -m pip install --upgrade pip
    tdsnn_logged "$TDSNN_VENV/bin/python" -m pip install -c "$tdsnn_root/constraints.txt" -e "$tdsnn_spec"
    touch "$tdsnn_stamp"
else
    tdsnn_logged "$TDSNN_VENV/bin/python" -m pip install --no-deps -e "$tdsnn_root"
fi
export PATH="$TDSNN_VENV/bin:$PATH"
export TDSNN_VENV
