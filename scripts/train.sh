#!/usr/bin/env bash
# Set up the environment (first run only) and train the default area stack on the built-in
# `shapes` dataset. Extra arguments are passed to `tdsnn train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" core
exec tdsnn train --area-stack v1-v4-it "$@"
