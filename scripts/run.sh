#!/usr/bin/env bash
# Set up (first time) and start the workbench app on the built-in defaults.
# Extra arguments go to `dynsdpb app` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/dynsdpb app "$@"
