# syntax=docker/dockerfile:1
#
# The sealtrail image: the operator (`sealtrail operator`, the default command), the worker it
# injects beside applications (`sealtrail worker --config ...`) and the command line
# (`sealtrail verify`, `sealtrail dump`, ...). One image, so the operator's `--default-image`
# and the chart's `image.repository`/`image.tag` name the same thing.
#
#   docker build -t registry.example.com/platform/sealtrail:0.1.0 .
#
# Where no engine or registry is in reach, scripts/build_image.sh builds this file unchanged with
# buildah on a local Debian base laid out like the official image (docs/image.md).
#
# It runs as uid/gid 65532 and writes nothing outside the volumes Kubernetes mounts (the store
# at /var/lib/sealtrail, a scratch /tmp), so `readOnlyRootFilesystem: true` holds; Python's
# bytecode is compiled here, at build time, never at run time. No HEALTHCHECK: Kubernetes probes
# the worker's /readyz and /healthz (admin port 8471) and the operator's /healthz (8080).
#
# Base image. Python 3.11 is the minor version sealtrail supports (pyproject.toml:
# requires-python ">=3.11,<3.12") and the one its tests run on; the tag pins the patch release
# and Debian 12 (bookworm, glibc 2.36: the cryptography wheel in requirements.lock needs 2.34).
# Pin the digest as well before publishing, so that a re-pushed tag cannot change what you
# ship. Read it from the registry where you build, then pass it in (or write it in below):
#
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm     # "Digest: sha256:..."
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
#
# No digest is written here because none could be read where this file was written (no
# registry in reach); a digest copied from elsewhere would be a guess. Renovate or Dependabot
# keep a `tag@digest` reference current once it is there. Both stages use the same image, so the
# virtual environment's interpreter path (/usr/local/bin/python3.11) is the same in each.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a virtual environment with the pinned runtime packages and sealtrail --------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The runtime packages first (this layer is reused while only sealtrail's code changes).
# docker/requirements-runtime.txt is complete (the transitive closure, at requirements.lock's
# versions), so pip resolves nothing (--no-deps); --only-binary installs wheels only, never
# compiling a source distribution here. The venv gets no pip or setuptools of its own: the
# build stage's pip installs into it (--python).
COPY docker/requirements-runtime.txt docker/requirements-runtime.txt
RUN python -m venv --without-pip /opt/sealtrail \
 && python -m pip --python /opt/sealtrail/bin/python install \
        --no-deps --only-binary=:all: --no-compile -r docker/requirements-runtime.txt

# sealtrail itself: a wheel built with the setuptools version of requirements.lock (no build
# isolation, so nothing unpinned is fetched to build it), installed without dependencies;
# `pip check` then proves the environment consistent. Bytecode is compiled once, for every
# module, with hash-based invalidation: it stays valid whatever the files' times become.
COPY pyproject.toml README.md ./
COPY operator/sealtrail operator/sealtrail
RUN python -m pip install setuptools==84.2.1 \
 && python -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && python -m pip --python /opt/sealtrail/bin/python install --no-deps --no-compile \
        /tmp/wheels/sealtrail-*.whl \
 && python -m pip --python /opt/sealtrail/bin/python check \
 && /opt/sealtrail/bin/python -m compileall -q -j 0 -f --invalidation-mode unchecked-hash \
        /opt/sealtrail/lib/python3.11/site-packages \
 && /opt/sealtrail/bin/sealtrail --version

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="sealtrail" \
      org.opencontainers.image.description="Kubernetes operator and worker that ship tamper-evident audit logs to SIEMs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/sealtrail/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1

# The user the pods run as (the chart and the injected worker say runAsUser/runAsGroup 65532),
# named so that tools looking it up find it; no home, no shell. The base image's own pip,
# setuptools and wheel are removed: nothing installs at run time. The standard library's
# bytecode is compiled (the python images ship none), so that a worker starts without compiling
# it in memory on every start (a read-only root filesystem can never cache it).
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --no-log-init nonroot \
 && PIP_ROOT_USER_ACTION=ignore python -m pip uninstall --yes --no-cache-dir \
        pip setuptools wheel \
 && python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

COPY --from=build /opt/sealtrail /opt/sealtrail

USER 65532:65532

# 8470 ingest (loopback in a sidecar), 8471 worker admin (status, metrics, probes),
# 8080 operator health, 9443 operator admission webhook. Documentation only.
EXPOSE 8470 8471 8080 9443

HEALTHCHECK NONE

ENTRYPOINT ["sealtrail"]
CMD ["operator"]
