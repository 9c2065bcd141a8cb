# One image for every role: `pkrelay serve`, `pkrelay worker`, `pkrelay migrate`.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pkrelay ./pkrelay
COPY receiver ./receiver
COPY workers ./workers
RUN pip install --no-cache-dir . && useradd --system --home /data pkrelay && mkdir -p /data && chown pkrelay /data
USER pkrelay
WORKDIR /data
EXPOSE 8080
ENV PKRELAY_DATA_DIR=/data PKRELAY_SERVER__HOST=0.0.0.0
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
CMD ["pkrelay", "serve"]
