# The serving image: FastAPI + ONNX Runtime, no torch. The bundle (manifest.json,
# tokenizer.json, *.onnx) is built outside the image (`make bundle`) and mounted:
#
#   docker build -t promptgen .                      # GPU image (CUDA 12, cuDNN 9)
#   docker build -t promptgen:cpu --target cpu .     # CPU image
#   docker run --gpus all -p 8000:8000 -v "$PWD/artifacts/bundle:/bundle:ro" promptgen
#
# One process owns the cores/GPU (one uvicorn worker): batching happens inside it.

# ---- CPU image -------------------------------------------------------------
FROM python:3.11-slim AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PROMPTGEN_BUNDLE=/bundle PROMPTGEN_HOST=0.0.0.0 PROMPTGEN_PORT=8000
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY server server
RUN pip install '.[serve]'
RUN useradd --system --uid 10001 app
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PROMPTGEN_PORT\"]}/readyz', timeout=2)"
CMD ["python", "-m", "server", "serve"]

# ---- GPU image (default) ---------------------------------------------------
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PROMPTGEN_BUNDLE=/bundle PROMPTGEN_HOST=0.0.0.0 PROMPTGEN_PORT=8000 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY server server
# onnxruntime-gpu only: mixing it with the CPU onnxruntime wheel breaks both.
RUN pip install '.[gpu]'
RUN useradd --system --uid 10001 app
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PROMPTGEN_PORT\"]}/readyz', timeout=2)"
CMD ["python", "-m", "server", "serve"]
