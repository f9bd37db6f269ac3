# syntax=docker/dockerfile:1
# The Dagster code location (gRPC server) and the pipeline's runs: the project's core and `pipeline`
# extra, with the CPU build of torch. The same image runs `python -m recsys_assets pipeline` (the
# run-worker job) and the MLflow tracking server.
#   docker build -f infra/docker/code-location.Dockerfile -t recsys-pipeline .      (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# CPU torch from the PyTorch index (PyPI's build pulls the CUDA stack); its dependencies are in the lock
RUN python -m venv /opt/venv \
    && pip install --no-deps --only-binary=:all: --index-url "${TORCH_INDEX}" torch==2.13.0+cpu
COPY infra/requirements/pipeline.txt /tmp/requirements.txt
RUN pip install --no-deps --only-binary=:all: -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY recsys_assets /src/recsys_assets
COPY serving /src/serving
COPY console /src/console
RUN pip install --no-deps /src && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/recsys recsys \
    && install -d -o recsys -g recsys /opt/dagster/home /opt/dagster/home/storage /opt/dagster/azure /var/lib/recsys/events \
        /var/lib/mlflow/artifacts
COPY --from=build /opt/venv /opt/venv
COPY --chown=recsys:recsys infra/dagster/dagster.yaml /opt/dagster/home/dagster.yaml
COPY --chown=recsys:recsys infra/dagster/dagster.azure.yaml /opt/dagster/azure/dagster.yaml
# DAGSTER_HOME and RECSYS_DAGSTER_HOME name the same instance: the code server, the runs it launches
# and `python -m recsys_assets pipeline` all record there. /opt/dagster/azure is the Azure variant.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/home \
    RECSYS_DAGSTER_HOME=/opt/dagster/home \
    DAGSTER_CODE_LOCATION_PORT=4000
USER 10001:10001
WORKDIR /home/recsys
EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "--port", "4000"]
CMD ["dagster", "code-server", "start", "--host", "0.0.0.0", "--port", "4000", \
     "--module-name", "recsys_assets.defs.definitions", "--location-name", "recsys"]
