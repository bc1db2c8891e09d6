#!/usr/bin/env bash
# Set up the environment with the test extra (first run only), lint, and run the test suite.
# Extra arguments are passed to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" test
cd "$tdsnn_root"
ruff check tdsnn tests benchmarks
ruff format --check tdsnn tests benchmarks
exec python -m pytest "$@"
