#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install the gpu extra (onnxruntime-gpu with the CUDA 12 and
# cuDNN 9 runtime wheels from PyPI, faiss-gpu), run the service's CUDA self-check, and print one
# JSON line per figure as it is measured: embedding throughput (batch 1/32/256), the batching
# benchmark on the GPU (1/4/16/64 clients), FAISS search on 1M vectors (GPU and CPU), training
# throughput. Missing CUDA libraries are named with the wheel that ships them. Record the
# output in docs/benchmarks.md.
#   bash scripts/gpu_check.sh [--crops DIR_OF_ALIGNED_CROPS] | tee gpu_check.jsonl
#   bash scripts/gpu_check.sh --cpu       # the same sections on the CPU, small (what CI runs)
# With GPU_CHECK_NO_INSTALL=1 it uses the current python as it is (a machine without network
# that already has onnxruntime-gpu, its NVIDIA wheels, faiss-gpu and a CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " == *" --cpu "* ]]; then
    exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
if [ "${GPU_CHECK_NO_INSTALL:-0}" = "1" ]; then
    PY=python3
else
    VENV=${GPU_VENV:-.venv-gpu}
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e ".[gpu,dev]"
    # a CUDA build of torch for the training figure (PyPI's default Linux wheel is a CUDA build)
    "$VENV/bin/pip" install -q "torch==2.13.0" || echo "torch not installed: training skipped" >&2
    PY="$VENV/bin/python"
fi
"$PY" -m service.cli models fetch >&2
exec "$PY" bench/gpu_check.py "$@"
