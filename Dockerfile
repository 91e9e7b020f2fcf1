# syntax=docker/dockerfile:1
# The serving image: FastAPI + ONNX Runtime, only the serving extras (no torch, no
# training code: the serving stages COPY only contract/, runtime/, server/).
# Three targets (docs/architecture.md, "serving"):
#
#   docker build -t promptgen .                        # gpu (default): CUDA 13 + cuDNN 9, onnxruntime-gpu
#   docker build -t promptgen:cpu --target cpu .       # hosts without a GPU: ubuntu + onnxruntime (CPU)
#   docker build -t promptgen:train --target train .   # training on a GPU host (torchrun, see README)
#   docker run --gpus all -p 8000:8000 -v "$PWD/artifacts/bundle:/bundle:ro" promptgen
#   docker build --build-arg BUNDLE=artifacts/bundle -t promptgen:baked .   # bundle baked in
#
# CUDA: the gpu stage pins onnxruntime-gpu (ORT_GPU_VERSION) and uses the CUDA + cuDNN
# *runtime* base of the same CUDA major. onnxruntime-gpu 1.31.1, the newest on PyPI when
# this was written, is built for CUDA 13.0 and cuDNN 9 (its wheel's
# onnxruntime/capi/build_and_package_info.py says cuda_version = '13.0'; its `cuda` extra
# requires nvidia-cuda-runtime~=13.0, its `cudnn` extra nvidia-cudnn-cu13~=9.0); 1.19 to
# some later release were CUDA 12. A base of another CUDA major (or cuDNN 8) fails to load
# the CUDA execution provider and the server falls back to CPU (it logs the provider).
# Change ORT_GPU_VERSION and CUDA_BASE together.
#
# One engine process per GPU (one uvicorn worker; batching happens inside it): scale
# out with containers/pods, one GPU each, never with workers.
# Stop: SIGTERM drains (server/__main__.py): /readyz turns 503, in-flight requests get
# PROMPTGEN_GRACE_PERIOD_S (20 s), then uvicorn's 2 s shutdown. Give the container a stop
# grace period of at least 30 s (`docker stop -t 30`, compose stop_grace_period: 30s).
ARG CUDA_BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.31.1
ARG CPU_BASE=ubuntu:24.04
# A folder of the build context copied to /bundle; the default is an empty placeholder,
# so the bundle comes from a volume mounted on /bundle (or PROMPTGEN_BUNDLE elsewhere).
ARG BUNDLE=deploy/empty-bundle

# ---- cpu: hosts without a GPU -------------------------------------------------------
FROM ${CPU_BASE} AS cpu
ARG BUNDLE
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/tmp \
    PROMPTGEN_BUNDLE=/bundle PROMPTGEN_HOST=0.0.0.0 PROMPTGEN_PORT=8000 PROMPTGEN_GRACE_PERIOD_S=20
# Distribution packages follow the base image's pinned release; pinning their exact
# versions would break the build at every Ubuntu security update.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY runtime runtime
COPY server server
# Versions are bounded in pyproject.toml's `serve` extra. Our CPU kernels (runtime/custom_ops.py:
# int8 attention, the INT8 weight MatMul) are compiled beside the code the server runs
# (/app/runtime): gcc is installed for them and removed in the same layer, so the image carries
# the library, not the compiler. The last command fails the build if it is missing.
# hadolint ignore=DL3008,DL3013
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir ".[serve]" && python -m runtime.custom_ops --build \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && python -m runtime.custom_ops
COPY ${BUNDLE} /bundle
RUN useradd --system --uid 10001 --no-create-home app
USER 10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['PROMPTGEN_PORT'], timeout=2)"]
ENTRYPOINT ["python", "-m", "server"]
CMD ["serve"]

# ---- train: training on a GPU host (torch with CUDA, the whole repository) ----------
# docker run --gpus all -v "$PWD/artifacts:/app/artifacts" promptgen:train \
#   torchrun --standalone --nproc_per_node=1 -m training train --data artifacts/data/scored.jsonl --out artifacts/checkpoint
FROM ${CUDA_BASE} AS train
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/tmp HF_HUB_OFFLINE=1
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY runtime runtime
COPY server server
# Only this target copies training/ and export/; the serving stages never do.
COPY training training
COPY export export
# torch's default Linux wheel on PyPI is a CUDA build that brings its own CUDA libraries
# (nvidia-* wheels), so it needs only the host driver, not this base's CUDA version.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "torch>=2.6" && pip install --no-cache-dir ".[train]"
RUN useradd --system --uid 10001 --no-create-home app
USER 10001
CMD ["python", "-m", "training", "--help"]

# ---- gpu (default, last stage): CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu ---------
# Same runtime contract as `cpu` (tests/test_deploy.py checks the two stages agree).
FROM ${CUDA_BASE} AS gpu
ARG BUNDLE
ARG ORT_GPU_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/tmp \
    PROMPTGEN_BUNDLE=/bundle PROMPTGEN_HOST=0.0.0.0 PROMPTGEN_PORT=8000 PROMPTGEN_GRACE_PERIOD_S=20
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY runtime runtime
COPY server server
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" "onnxruntime-gpu==${ORT_GPU_VERSION}"
COPY ${BUNDLE} /bundle
RUN useradd --system --uid 10001 --no-create-home app
USER 10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['PROMPTGEN_PORT'], timeout=2)"]
ENTRYPOINT ["python", "-m", "server"]
CMD ["serve"]
