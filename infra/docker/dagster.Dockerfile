# syntax=docker/dockerfile:1
# Dagster webserver and daemon, one image, two commands (the daemon's: `dagster-daemon run -w
# /opt/dagster/workspace.yaml`). They reach the code location over gRPC and never import the
# project, so the image holds Dagster, its Postgres storage and its Blob log manager only.
#   docker build -f infra/docker/dagster.Dockerfile -t recsys-dagster .      (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY infra/requirements/dagster.txt /tmp/requirements.txt
RUN pip install --no-deps --only-binary=:all: -r /tmp/requirements.txt && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/recsys recsys \
    && install -d -o recsys -g recsys /opt/dagster/home /opt/dagster/home/storage /opt/dagster/azure
COPY --from=build /opt/venv /opt/venv
COPY --chown=recsys:recsys infra/dagster/dagster.yaml /opt/dagster/home/dagster.yaml
COPY --chown=recsys:recsys infra/dagster/dagster.azure.yaml /opt/dagster/azure/dagster.yaml
COPY --chown=recsys:recsys infra/dagster/workspace.yaml /opt/dagster/workspace.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    DAGSTER_CODE_LOCATION_PORT=4000
USER 10001:10001
WORKDIR /opt/dagster
EXPOSE 3000
# the webserver's; the daemon's service runs `dagster-daemon liveness-check` instead
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/server_info', timeout=4)"]
CMD ["dagster-webserver", "--host", "0.0.0.0", "--port", "3000", "--workspace", "/opt/dagster/workspace.yaml"]
