# syntax=docker/dockerfile:1
# The ops console (Streamlit): the project's core and `console` extra, no training stack.
#   docker build -f infra/docker/console.Dockerfile -t recsys-console .      (from the repository root)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY infra/requirements/console.txt /tmp/requirements.txt
RUN pip install --no-deps --only-binary=:all: -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY recsys_assets /src/recsys_assets
COPY serving /src/serving
COPY console /src/console
RUN pip install --no-deps /src && pip check

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/recsys recsys
COPY --from=build /opt/venv /opt/venv
# the console's Streamlit settings (theme, toolbar) are not package data: the user's config instead
COPY --chown=recsys:recsys console/.streamlit/config.toml /home/recsys/.streamlit/config.toml
# Streamlit runs the installed package's app.py; its pages sit beside it. The port is the image's
# (RECSYS_CONSOLE_PORT says the same, for the code that reads the setting).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECSYS_CONSOLE_PORT=8501 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_HEADLESS=true
USER 10001:10001
WORKDIR /home/recsys
EXPOSE 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
CMD ["streamlit", "run", "/opt/venv/lib/python3.11/site-packages/console/app.py", \
     "--server.address", "0.0.0.0", "--server.port", "8501"]
