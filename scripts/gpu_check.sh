#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install the gpu extra, run the service's CUDA self-check,
# and print JSON with embedding throughput (batch 1/32/256), FAISS search on 1M vectors (GPU and
# CPU) and training throughput. Record its output in docs/benchmarks.md.
#   bash scripts/gpu_check.sh [--crops DIR_OF_ALIGNED_CROPS]
# With GPU_CHECK_NO_INSTALL=1 it uses the current python as it is (a machine without network
# that already has onnxruntime-gpu, faiss-gpu and a CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
if [ "${GPU_CHECK_NO_INSTALL:-0}" = "1" ]; then
    PY=python3
else
    VENV=${GPU_VENV:-.venv-gpu}
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e ".[gpu]"
    # a CUDA build of torch for the training figure (PyPI's default Linux wheel is a CUDA build)
    "$VENV/bin/pip" install -q "torch==2.13.0" || echo "torch not installed: training skipped" >&2
    PY="$VENV/bin/python"
fi
"$PY" -m service.cli models fetch >&2
MARGINFACE_DEVICE=cuda "$PY" -m service.cli models list >&2
exec "$PY" bench/gpu_check.py "$@"
