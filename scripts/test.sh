#!/usr/bin/env bash
# Set up (first time, with dev extras) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Tests never touch the network.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# Two workers (pytest-xdist): much of the suite waits on subprocesses, browsers and servers,
# so two share two cores well (here 8.3 min where one process took 13-15 min).
# TEST_WORKERS=0 runs in one process; a later -n in the arguments wins.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" "$@"
