# safegen container image: one file for CPU and CUDA hosts.
#
#   CPU:   docker build -t safegen:cpu .
#   CUDA:  docker build -t safegen:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#          docker run --gpus all -e SAFEGEN_DEVICE=cuda ... safegen:cuda
#   Extras (onnxruntime, Ray Serve):  --build-arg EXTRAS=onnx,ray
#
# The CUDA wheels of torch carry their own CUDA libraries, so the base stays plain Debian; the host's
# NVIDIA driver comes in through the NVIDIA container toolkit (`--gpus`, or the k8s device plugin).
# A build that must reach the package index through a TLS-intercepting proxy passes the proxy's CA
# bundle as a build secret (never stored in a layer):
#   --secret id=hostca,src=/etc/ssl/certs/ca-certificates.crt
# A local folder of wheels (e.g. a prebuilt torch) is used with PIP_FIND_LINKS and a mount:
#   podman build -v /opt/wheels:/opt/wheels:ro --build-arg PIP_FIND_LINKS=/opt/wheels ...
# docs/deploy.md has the details, the sizes and the start-up times.

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# python: Debian's Python and what the runtime needs, shared by the stages below
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python

ARG SAFEGEN_UID=10001

# tini is PID 1: it forwards SIGTERM/SIGINT to the server and reaps child processes (Ray's, when
# run with --ray). coreutils (in the base) provides `sleep` for a Kubernetes preStop pause.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid "${SAFEGEN_UID}" safegen \
 && useradd --system --uid "${SAFEGEN_UID}" --gid safegen --home-dir /home/safegen \
        --create-home --shell /usr/sbin/nologin safegen \
 && mkdir -p /models \
 && chown safegen:safegen /models

# ---------------------------------------------------------------------------------------------
# deps: a virtual environment with torch and the dependencies (not safegen: a change to src/
# rebuilds none of this, and the final stage copies it from a layer that did not change)
# ---------------------------------------------------------------------------------------------
FROM python AS deps

# Where torch comes from: the PyTorch CPU index by default (a few hundred MB instead of the
# multi-GB CUDA build that plain PyPI serves on Linux); a CUDA index (cu126, cu128, ...) for GPU
# hosts; empty for the default index (plus PIP_FIND_LINKS).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT=torch
# Optional extras of the package, comma-separated: onnx, ray.
ARG EXTRAS=""
# Extra places pip looks for wheels (a folder mounted into the build, or a URL).
ARG PIP_FIND_LINKS=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/safegen

# No bytecode at install (--no-compile): compiling all of torch, transformers and diffusers took
# most of the install time and 280 MB. The steps below compile what the server imports.

# torch first, in its own layer: it is the largest download and changes least often.
RUN --mount=type=secret,id=hostca \
    set -eu; \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi; \
    if [ -z "${PIP_FIND_LINKS}" ]; then unset PIP_FIND_LINKS; fi; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
        /opt/safegen/bin/pip install --no-compile --index-url "${TORCH_INDEX_URL}" "${TORCH_REQUIREMENT}"; \
    else \
        /opt/safegen/bin/pip install --no-compile "${TORCH_REQUIREMENT}"; \
    fi

# Then the dependencies, read from pyproject.toml (a layer that changes with it, not with src/).
# Importing what the server uses writes the bytecode of exactly those modules: the read-only
# image cannot cache it at run time, and without it every start would compile torch again.
COPY pyproject.toml /src/
RUN --mount=type=secret,id=hostca \
    set -eu; \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi; \
    if [ -z "${PIP_FIND_LINKS}" ]; then unset PIP_FIND_LINKS; fi; \
    python3 -c 'import sys, tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
extras = [e.strip() for e in sys.argv[1].split(",") if e.strip()]; \
print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
        "${EXTRAS}" > /tmp/requirements.txt; \
    /opt/safegen/bin/pip install --no-compile -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt; \
    /opt/safegen/bin/python -c 'import torch, numpy, PIL.Image, fastapi, pydantic_settings, \
httpx, prometheus_client, limits, redis, safetensors, huggingface_hub, \
uvicorn.loops.auto, uvicorn.protocols.http.auto, uvicorn.protocols.websockets.auto, \
uvicorn.lifespan.on; \
from transformers import AutoModelForImageClassification, ViTForImageClassification'

# ---------------------------------------------------------------------------------------------
# wheel: safegen itself, built once into a wheel
# ---------------------------------------------------------------------------------------------
FROM deps AS wheel

COPY README.md /src/
COPY src /src/src
RUN --mount=type=secret,id=hostca \
    set -eu; \
    if [ -s /run/secrets/hostca ]; then export PIP_CERT=/run/secrets/hostca; fi; \
    /opt/safegen/bin/pip wheel --no-deps --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------------------
# runtime: the venv and a non-root user; no compiler, no pip cache, no apt lists
# ---------------------------------------------------------------------------------------------
FROM python AS runtime

ARG SAFEGEN_UID=10001

COPY --from=deps /opt/safegen /opt/safegen
# safegen on top, in a small layer of its own; its bytecode too, and that of any module it
# imports that the deps stage did not. The wheel is copied, not bind-mounted: a RUN's cache key
# does not cover a mounted stage's files with every builder (buildah reused a stale layer).
COPY --from=wheel /wheels /tmp/wheels
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
        /opt/safegen/bin/pip install --no-compile --no-deps --no-index /tmp/wheels/safegen-*.whl \
 && rm -rf /tmp/wheels \
 && /opt/safegen/bin/python -m compileall -q /opt/safegen/lib/python3*/site-packages/safegen \
 && /opt/safegen/bin/python -c 'import safegen.cli, safegen.app' \
 && /opt/safegen/bin/safegen --help >/dev/null

# Models and caches live in the /models volume: the Hugging Face cache (HF_HOME) that
# `safegen download` fills, and safegen's own caches (the ONNX export) under XDG_CACHE_HOME.
# The rest of the file system can be read-only.
ENV PATH=/opt/safegen/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models \
    XDG_CACHE_HOME=/models/.cache \
    SAFEGEN_HOST=0.0.0.0 \
    SAFEGEN_PORT=8000

VOLUME ["/models"]
WORKDIR /home/safegen
USER ${SAFEGEN_UID}:${SAFEGEN_UID}
EXPOSE 8000

# Liveness only (the process answers); readiness (/readyz) is for load balancers and probes.
# `--format docker` keeps this instruction when building with podman/buildah.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SAFEGEN_PORT', '8000'), timeout=4)"]

# SIGTERM: readiness goes 503, in-flight requests, generations and uploads finish (up to
# SAFEGEN_SHUTDOWN_GRACE_S), then the server exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "safegen"]
CMD ["serve"]
