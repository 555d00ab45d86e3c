# One image for every lungseg pipeline component (the KFP lightweight components run in it).
#
# Build it with `make image` (CPU flavour: tests, laptops, CPU nodes) or `make image-cuda` (GPU nodes);
# both run scripts/image.py, which stages .image/context/ (this machine's CA bundle for pip and, for
# the CPU flavour, the torch CPU wheel), makes the base image from Debian packages when BASE_IMAGE
# cannot be pulled, and builds with the classic builder. See docs/pipeline.md ("The image").
# Only package registries are contacted during the build (PyPI, or the index TORCH_INDEX_URL names).
# (No `# syntax=` line: BuildKit would pull its frontend image, which fails offline.)

# Any Debian-like image with Python 3.11 and its venv module: python:3.11-slim, or lungseg-base:bookworm
# made by `mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm`.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stage: the venv
FROM ${BASE_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
# Used when no torch wheel is staged: PyPI's Linux torch is the CUDA build (the GPU flavour);
# https://download.pytorch.org/whl/cu126 (or /cpu) selects another build where that index is reachable.
ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PATH=/opt/lungseg/venv/bin:$PATH

# certs/ca-certificates.crt: the CA bundle pip uses in this stage (registries behind a TLS proxy);
# wheels/: a staged torch wheel (the CPU flavour). Neither reaches the final image.
COPY .image/context/ /tmp/build/

# Debian's python is "externally managed": everything goes into a venv, which the final stage copies.
RUN python3 -m venv /opt/lungseg/venv \
    && if [ -s /tmp/build/certs/ca-certificates.crt ]; then \
         printf '[global]\ncert = /tmp/build/certs/ca-certificates.crt\n' > /opt/lungseg/venv/pip.conf; fi

# torch FIRST and alone, pinned (as in the Makefile): an unpinned torch pulled in by another package
# would be whatever build the index serves.
RUN if ls /tmp/build/wheels/torch-${TORCH_VERSION}[+-]*.whl >/dev/null 2>&1; then \
         pip install /tmp/build/wheels/torch-${TORCH_VERSION}[+-]*.whl; \
    else \
         pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
    fi

# pinned runtime dependencies only (test/dev tools are in requirements-dev.txt, not here); the
# pip.conf naming the build's CA bundle goes before the final stage copies the venv
WORKDIR /tmp/build
COPY requirements.txt ./
RUN pip install -r requirements.txt \
    && rm -f /opt/lungseg/venv/pip.conf

# ---------------------------------------------------------------- final stage: base + venv + package + user
FROM ${BASE_IMAGE}

ENV PATH=/opt/lungseg/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/lungseg/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONUTF8=1 \
    LANG=C.UTF-8 \
    MLFLOW_DISABLE_TELEMETRY=true

RUN groupadd --gid 1000 lungseg \
    && useradd --uid 1000 --gid lungseg --create-home --home-dir /home/lungseg --shell /usr/sbin/nologin lungseg

# the dependencies (one layer, reused until requirements.txt or torch change)
COPY --from=build /opt/lungseg/venv /opt/lungseg/venv

# the package itself (lungseg + components + pipelines): offline, without touching the pinned
# dependencies (setuptools, a torch dependency, is in the venv: no build isolation needed)
WORKDIR /opt/lungseg/src
COPY pyproject.toml README.md ./
COPY lungseg ./lungseg
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps --no-build-isolation --no-index --no-cache-dir --disable-pip-version-check . \
    && pip check --disable-pip-version-check \
    && python -c "import lungseg, components, pipelines, torch, mlflow, kfp; print('lungseg image ok', torch.__version__)"

USER lungseg:lungseg
WORKDIR /home/lungseg
ENTRYPOINT []
CMD ["lungseg", "--help"]
