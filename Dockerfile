# syntax=docker/dockerfile:1
# One image for the ESGD controller and its workers (`esgd`, `esgd-worker`).
#   GPU (default; PyPI's Linux torch wheel bundles CUDA):  docker build -t esgd:0.1.0 .
#   CPU only (e.g. the kind smoke test):                   docker build --build-arg VARIANT=cpu -t esgd:smoke .
# It runs as the non-root user 10001 (the uid the Workflows and the chart set) and keeps every
# cache under /tmp, so the pods can run with a read-only root filesystem.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# 1. The wheel, built from the source tree (see .dockerignore for what is sent).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN pip install --no-cache-dir "build>=1.0"
COPY . .
RUN python -m build --wheel --outdir /dist

# 2. The runtime: torch of the chosen variant, then the wheel with its dependencies.
FROM ${PYTHON_IMAGE}
ARG VARIANT=gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
RUN case "${VARIANT}" in \
      gpu) pip install "torch==${TORCH_VERSION}" ;; \
      cpu) pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}" ;; \
      *) echo "VARIANT must be gpu or cpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install /tmp/dist/esgd-*.whl && rm -rf /tmp/dist \
    && groupadd --gid 10001 esgd \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin esgd
USER 10001:10001
WORKDIR /tmp
LABEL org.opencontainers.image.title="esgd" \
      org.opencontainers.image.description="Evolutionary SGD: controller and workers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["esgd"]
CMD ["--help"]
