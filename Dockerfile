# The serving image: FastAPI + ONNX Runtime, no torch. The bundle (manifest.json,
# tokenizer.json, *.onnx) is built outside the image (`make bundle`) and mounted:
#
#   docker build -t promptgen .                                  # GPU: CUDA 12, cuDNN 9, onnxruntime-gpu
#   docker build -t promptgen:cpu --build-arg BASE=ubuntu:24.04 --build-arg EXTRA=serve .
#   docker run --gpus all -p 8000:8000 -v "$PWD/artifacts/bundle:/bundle:ro" promptgen
#
# One process owns the cores/GPU (one uvicorn worker): batching happens inside it.
# EXTRA picks the onnxruntime wheel: `gpu` (onnxruntime-gpu) or `serve` (CPU); the two
# must never be installed together.
ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
FROM ${BASE}
ARG EXTRA=gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    PROMPTGEN_BUNDLE=/bundle PROMPTGEN_HOST=0.0.0.0 PROMPTGEN_PORT=8000
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY runtime runtime
COPY server server
RUN pip install ".[${EXTRA}]"
RUN useradd --system --uid 10001 app
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["python", "-m", "server", "serve"]
