#!/usr/bin/env bash
# Create .venv if missing and install everything; idempotent and quick when already done.
# Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
V=.venv/bin
stamp=".venv/.installed-$( (cat requirements.txt requirements-assets.txt pyproject.toml; echo "${1:-}") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  $V/python -m pip install -q --upgrade pip
  # torch first and pinned: it takes the local CPU wheel; an unpinned torch pulls CUDA builds.
  $V/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  $V/pip install -q -r requirements.txt
  $V/pip install -q --no-deps -r requirements-assets.txt
  if [ "${1:-}" = "dev" ]; then
    # tensorboard: the dev extra, for the DynSDPBTrainer example and --report-to tests
    $V/pip install -q --no-deps -e . && $V/pip install -q "pytest>=8" "pytest-xdist>=3" "playwright>=1.50" \
      "tensorboard==2.21.0"
  else
    $V/pip install -q --no-deps -e .
  fi
  touch "$stamp"
fi
