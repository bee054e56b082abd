# syntax=docker/dockerfile:1
#
# The moderation worker image: `moderation run` by default, `moderation migrate` as a one-shot step.
#
#   CPU (default):
#     docker build -t moderation:cpu .
#
#   GPU: a CUDA-capable base and a CUDA build of torch that matches it, e.g.
#     docker build -t moderation:gpu \
#       --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime \
#       --build-arg TORCH_SPEC= .
#   (pytorch/pytorch already ships a CUDA torch in its Python: an empty TORCH_SPEC leaves it alone), or
#     docker build -t moderation:gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg PYTHON=python3.11 \
#       --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124" .
#   (the nvidia/cuda images carry no Python: build FROM an image derived from it that installs python3.11
#   with venv support, e.g. `apt-get install python3.11 python3.11-venv`, or extend this file's runtime stage).
#   Run with `docker run --gpus all ...`; MODERATION_MODEL__DEVICE=auto then picks CUDA with fp16 weights.
#
# The model is never downloaded (HF_HUB_OFFLINE=1, local_files_only): mount a checkpoint under /models and
# point MODERATION_MODEL__NAME_OR_PATH at it, e.g. /models/clip-vit-base-patch32.

ARG BASE_IMAGE=python:3.11-slim
ARG BUILDER_IMAGE=python:3.11-slim

# --- builder: a wheel of this project (pure Python; the Alembic migrations ship inside it as
# --- moderation.migrations, see pyproject.toml) and of pdqhash, the one dependency PyPI has as source only --
FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# pdqhash (PDQ perceptual hashes) is an sdist of C++: compiled here, so the runtime image needs no compiler.
# Its wheel is for the builder's Python: on a base with another Python, give BUILDER_IMAGE the same one.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "pdqhash>=0.2.8"
COPY pyproject.toml README.md ./
COPY moderation/ moderation/
COPY consumers/ consumers/
COPY migrations/ migrations/
COPY schemas/ schemas/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/wheels/moderation-*.whl')[0]).namelist(); \
sys.exit(0 if {'moderation/migrations/env.py', 'moderation/message_schemas/image-event.v1.json'} <= set(names) \
else 'migrations or message schemas missing from the wheel')"

# --- runtime ----------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

# The interpreter of the base image (python3.11 on an nvidia/cuda base with deadsnakes' Python).
ARG PYTHON=python3
# Installed before the wheel so pip keeps it. Default: the CPU build, from PyTorch's CPU index (PyPI's Linux
# x86_64 torch wheels are CUDA builds that pull in gigabytes of NVIDIA libraries; the CPU index serves
# x86_64 and aarch64, and `==2.13.0` matches its 2.13.0+cpu). Same version as the Makefile's TORCH.
# GPU: a CUDA build, e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124".
# Empty: leave the base image's torch alone (pytorch/pytorch bases).
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A venv that still sees the base image's site-packages (a preinstalled CUDA torch counts as installed).
RUN ${PYTHON} -m venv --system-site-packages /opt/venv \
    && if [ -n "${TORCH_SPEC}" ]; then /opt/venv/bin/pip install --no-cache-dir ${TORCH_SPEC}; fi

COPY --from=builder /wheels/ /tmp/wheels/
RUN /opt/venv/bin/pip install --no-cache-dir /tmp/wheels/pdqhash-*.whl /tmp/wheels/moderation-*.whl \
    && rm -rf /tmp/wheels \
    && /opt/venv/bin/python -c "from moderation.storage.migrate import script_location as s; \
assert (s() / 'env.py').is_file(), s()"

RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/moderation \
       --shell /usr/sbin/nologin moderation \
    && mkdir -p /app/data /models/hf \
    && chown -R 10001:10001 /app /models

WORKDIR /app
# MODERATION_POLICY__PATH defaults to policies/default.yaml, relative to this directory.
COPY --chown=10001:10001 policies/ /app/policies/

ENV HF_HOME=/models/hf \
    HF_HUB_OFFLINE=1 \
    MODERATION_LOG__FORMAT=json

# The model cache (Hugging Face checkpoints); mount it read-only in production.
VOLUME ["/models"]

USER 10001:10001

# The ops server: /metrics, /healthz (liveness), /readyz (readiness). MODERATION_OPS__PORT moves it.
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MODERATION_OPS__PORT', '9108') + '/healthz', timeout=4)"]

ENTRYPOINT ["moderation"]
CMD ["run"]
