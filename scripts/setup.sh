#!/usr/bin/env bash
# Create (or reuse) a virtual environment with tdsnn installed, then put it first on PATH.
#
#   source scripts/setup.sh [core]   # core dependencies
#   source scripts/setup.sh test     # plus the test extra (pytest, snntorch, spikingjelly, ruff)
#
# Scripts that take arguments of their own must name the extra (`source .../setup.sh core`):
# `source` without arguments passes on the caller's.
#
# The environment lives in $TDSNN_VENV (default: .venv in the repository). Dependencies are
# installed once per (pyproject.toml, constraints.txt, extra); after that a run only re-links
# tdsnn (an editable install without dependencies, which picks up new subpackages). Each step
# prints one line; pip's own output goes to $TDSNN_VENV/install.log (the last set-up's) and is
# shown only if a step fails. Sourcing leaves the calling shell's options (set -e, ...) alone.
tdsnn_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TDSNN_VENV=${TDSNN_VENV:-$tdsnn_root/.venv}

_tdsnn_step() {
    # Run a command with its output appended to the log; on failure show the end of the log.
    if ! "$@" >>"$TDSNN_VENV/install.log" 2>&1; then
        echo "tdsnn set-up failed; the end of $TDSNN_VENV/install.log:" >&2
        tail -n 40 "$TDSNN_VENV/install.log" >&2
        return 1
    fi
}

_tdsnn_setup() {
    local extra=${1:-core} python="$TDSNN_VENV/bin/python" key stamp spec
    case $extra in
        core) extra= ;;
        [a-z]*) ;;
        *) echo "usage: source scripts/setup.sh [core|test], got '$extra'" >&2; return 1 ;;
    esac
    if [ ! -x "$python" ]; then
        echo "Creating the virtual environment $TDSNN_VENV ..."
        python3 -m venv "$TDSNN_VENV" || return 1
    fi
    : >"$TDSNN_VENV/install.log" || return 1
    key=$("$python" -c 'import hashlib, sys
print(hashlib.sha256(b"".join(open(p, "rb").read() for p in sys.argv[1:])).hexdigest()[:16])' \
        "$tdsnn_root/pyproject.toml" "$tdsnn_root/constraints.txt") || return 1
    stamp="$TDSNN_VENV/.deps-$key-${extra:-core}"
    spec=$tdsnn_root${extra:+[$extra]}
    if [ ! -f "$stamp" ]; then
        echo "Installing tdsnn and its dependencies${extra:+ (extra: $extra)}; the first run" \
            "downloads PyTorch (a few minutes) ..."
        _tdsnn_step "$python" -m pip install --upgrade pip || return 1
        _tdsnn_step "$python" -m pip install -c "$tdsnn_root/constraints.txt" -e "$spec" || return 1
        touch "$stamp"
    else
        echo "Linking tdsnn into $TDSNN_VENV (dependencies already installed) ..."
        _tdsnn_step "$python" -m pip install --no-deps -e "$tdsnn_root" || return 1
    fi
}

if _tdsnn_setup "${1:-}"; then
    unset -f _tdsnn_setup _tdsnn_step
    export PATH="$TDSNN_VENV/bin:$PATH"
    export TDSNN_VENV
else
    unset -f _tdsnn_setup _tdsnn_step
    return 1 2>/dev/null || exit 1
fi
