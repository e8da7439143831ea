# syntax=docker/dockerfile:1
# One image for the ESGD controller and its workers (`esgd`, `esgd-worker`).
#   GPU, CUDA 12.8 build of torch (default):  docker build -t esgd:0.1.0 .
#   another CUDA build, for older drivers:    docker build --build-arg TORCH_FLAVOUR=cu126 -t esgd:0.1.0-cu126 .
#   CPU only (e.g. the kind smoke test):      docker build --build-arg TORCH_FLAVOUR=cpu -t esgd:smoke .
# TORCH_FLAVOUR names a folder of PyTorch's own index (https://download.pytorch.org/whl/<flavour>):
# `cpu`, or `cuXYZ` for the build against CUDA X.Y. A CUDA build runs on nodes whose NVIDIA driver is
# at least the one of its CUDA version (cu126: >= 560.28.03, cu128: >= 570.26, ...; `nvidia-smi`
# shows a node's driver): the table is in docs/kubernetes.md. Which flavours exist depends on
# TORCH_VERSION (PyTorch's "previous versions" page lists them per release).
# It runs as the non-root user 10001 (the uid the Workflows and the chart set) and keeps every
# cache under /tmp, so the pods can run with a read-only root filesystem.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# 1. The wheel, built from the source tree (see .dockerignore for what is sent).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN pip install --no-cache-dir "build>=1.0"
COPY . .
RUN python -m build --wheel --outdir /dist

# 2. The runtime, in layers from the least to the most often changed, so that a source change
#    rebuilds only the last one: torch of the chosen flavour; the other dependencies, pinned;
#    the wheel.
FROM ${PYTHON_IMAGE}
ARG TORCH_FLAVOUR=cu128
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
# torch is pinned here, not in constraints.txt: its build (+cpu, +cu128, ...) is chosen by the index
# it comes from, and its CUDA libraries (nvidia-*) and triton are pinned by the torch wheel itself.
RUN case "${TORCH_FLAVOUR}" in \
      cpu|cu[0-9][0-9]*) ;; \
      *) echo "TORCH_FLAVOUR must be cpu or cuXYZ (cu126, cu128, ...), not ${TORCH_FLAVOUR}" >&2; exit 1 ;; \
    esac \
    && pip install --index-url "${TORCH_INDEX}/${TORCH_FLAVOUR}" "torch==${TORCH_VERSION}" \
    && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
# Every other runtime dependency at the version pinned in constraints.txt (`make constraints`
# writes it from the development venv: pyproject's dependencies and what they need, torch aside).
# --no-deps and `pip check`: a package missing from the file fails the build instead of coming in
# at whatever version is newest that day.
COPY constraints.txt /opt/esgd/constraints.txt
RUN pip install --no-deps -r /opt/esgd/constraints.txt && pip check
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --constraint /opt/esgd/constraints.txt /tmp/dist/esgd-*.whl && pip check && rm -rf /tmp/dist \
    && groupadd --gid 10001 esgd \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin esgd
USER 10001:10001
WORKDIR /tmp
LABEL org.opencontainers.image.title="esgd" \
      org.opencontainers.image.description="Evolutionary SGD: controller and workers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["esgd"]
CMD ["--help"]
