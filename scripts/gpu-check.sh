#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA-specific tests, then `dynsdpb bench --json`, and the
# figures printed. Elsewhere it says there is no GPU and exits 0 (the CPU suite covers the rest).
# Usage: scripts/gpu-check.sh [--steps N]   (set TORCH_VERSION for a CUDA build of torch)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device here (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')); nothing to check"
  exit 0
fi
.venv/bin/python -c "import torch; print('gpu-check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
.venv/bin/python -m pytest -q -rs tests/test_cuda.py tests/test_ddp.py
.venv/bin/dynsdpb bench --json "$@" | tail -n 1 | tee bench-gpu.json
