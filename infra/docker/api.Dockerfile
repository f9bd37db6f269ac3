# syntax=docker/dockerfile:1
# The recommendation API (`python -m serving`): the project's core and `api` extra, no training stack.
#   docker build -f infra/docker/api.Dockerfile -t recsys-api .      (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# the lock alone first, so this layer is rebuilt only when a pin changes
COPY infra/requirements/api.txt /tmp/requirements.txt
RUN pip install --no-deps --only-binary=:all: -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY recsys_assets /src/recsys_assets
COPY serving /src/serving
COPY console /src/console
# the project against the locked set only; pip check fails the build if the lock misses a dependency
RUN pip install --no-deps /src && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/recsys recsys \
    && install -d -o recsys -g recsys /var/lib/recsys/events
COPY --from=build /opt/venv /opt/venv
# Host and port are the image's: the health check and EXPOSE below use them. Event-log segments are
# appended and fsync'd under RECSYS_EVENTS_DIR (a volume; an Azure Files share on Azure).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECSYS_API_HOST=0.0.0.0 \
    RECSYS_API_PORT=8000 \
    RECSYS_EVENTS_DIR=/var/lib/recsys/events
USER 10001:10001
WORKDIR /home/recsys
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["python", "-m", "serving"]
