# syntax=docker/dockerfile:1
#
# consul-sync container image.
#
#   docker build -t ghcr.io/alexieff-io/consul-sync:latest .
#   docker buildx build --platform linux/amd64,linux/arm64 \
#       --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#       -t ghcr.io/alexieff-io/consul-sync:0.1.0 .
#
# Two stages on the same slim Python 3.11 base, so the virtual environment
# built in the first runs unchanged in the second:
#   build  - a venv with the locked dependencies (requirements.lock, every
#            file checked against its hash) and the consul-sync wheel; then
#            pip and setuptools are removed from it;
#   final  - the venv, no pip, no compiler, a numeric non-root user.
# Nothing here is specific to one architecture: every locked dependency has
# wheels for amd64 and arm64.
#
# tests/ship/test_dockerfile.py runs the RUN steps of the build stage as they
# are written here, and checks the final stage; keep them plain shell.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lockfile changes.
COPY requirements.lock ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY core/ core/
COPY plugins/ plugins/
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && /opt/venv/bin/pip install --no-deps /dist/consul_sync-*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

# --- final -------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.0.0-dev
ARG REVISION=""

LABEL org.opencontainers.image.title="consul-sync" \
      org.opencontainers.image.description="Sync services tagged in Consul into Kubernetes headless Services and EndpointSlices" \
      org.opencontainers.image.source="https://github.com/alexieff-io/consul-sync" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image's own pip/setuptools/wheel and ensurepip's bundled wheels
# go: nothing in the final image can install packages.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && rm -rf /usr/local/lib/python3.11/ensurepip/_bundled

COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# distroless's "nonroot"; no passwd entry is needed for a numeric user.
USER 65532:65532

# METRICS_ADDR's default (:8080): /healthz, /readyz, /metrics, /version.
EXPOSE 8080

ENTRYPOINT ["consul-sync"]
