# syntax=docker/dockerfile:1
# One image for every lungseg pipeline component (KFP lightweight components run in it).
# Build and push: see docs/pipeline.md ("The image"). Only package registries are contacted:
# PyPI and the PyTorch wheel index (for the CUDA build of torch).
FROM python:3.11-slim

# CUDA 12.6 torch for the GPU node; `--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`
# gives a CPU-only image. torch is installed FIRST and alone, pinned (as in the Makefile).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1

RUN groupadd --gid 1000 lungseg \
    && useradd --uid 1000 --gid lungseg --create-home --home-dir /home/lungseg --shell /usr/sbin/nologin lungseg

WORKDIR /opt/lungseg

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# pinned runtime dependencies (cached layer: changes only with requirements.txt)
COPY requirements.txt ./
RUN pip install -r requirements.txt

# the package itself (lungseg + components + pipelines), without touching the pinned deps
COPY pyproject.toml README.md ./
COPY lungseg ./lungseg
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps . \
    && python -c "import lungseg, components, pipelines, torch, mlflow, kfp; print('lungseg image ok', torch.__version__)"

USER lungseg:lungseg
WORKDIR /home/lungseg
ENTRYPOINT []
CMD ["lungseg", "--help"]
