"""`python -m serving` (`make serve`): the API under uvicorn, with host, port and workers from the settings.

Each worker builds its app with `serving.app:create_app_from_env` (uvicorn's `--factory`), so settings
are read when a worker starts. With more than one worker, each listens on its own `SO_REUSEPORT`
socket (`serving/workers.py`), so kept-alive connections opened together spread over the workers;
the workers are forked from this process after it imported the app (their interpreter heap shared).
Then the Prometheus client also runs in multiprocess
mode over a fresh folder, `<tmp>/recsys-api-metrics-<pid of this process>-*`, removed at exit; one
left by a server that was killed (its pid no longer running) is removed when the next one starts.
`/metrics` answers for all workers whichever serves it.
Each worker uses one BLAS thread unless `OPENBLAS_NUM_THREADS`, `OMP_NUM_THREADS` or `MKL_NUM_THREADS` is set.
`X-Forwarded-For` is believed only from the proxies in `forwarded_allow_ips` (default: none); uvicorn's
own default would believe it from 127.0.0.1, which lets any local client pick its address (and so
escape the rate limit). Run uvicorn directly only with `--no-proxy-headers` or `--forwarded-allow-ips`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from recsys_assets.contract.settings import get_settings
from serving.workers import ReusePortMultiprocess, reuse_port_supported

APP = "serving.app:create_app_from_env"

# prometheus_client reads it when first imported, i.e. in each worker, which inherits it from here
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A request's products are small (one user's scores, one decoder layer): a second BLAS thread only
# hands work over and spin-waits, taking a core from the other workers (docs/benchmarks.md, API:
# 4x the CPU per request). The workers are the parallelism. Read when numpy is first imported, which
# is after this in every worker.
BLAS_THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
METRICS_PREFIX = "recsys-api-metrics-"
_METRICS_DIR = re.compile(rf"^{METRICS_PREFIX}(\d+)-")


def remove_stale_metrics_dirs(tmp: str | None = None) -> list[Path]:
    """Remove the metrics folders of servers that no longer run (killed before they could)."""
    from serving.telemetry import pid_alive  # here: prometheus_client must not be imported before main()

    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*"):
        match = _METRICS_DIR.match(path.name)
        # folders of the older naming (no pid) cannot be told apart: a running server may own one
        if match and path.is_dir() and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def main() -> int:
    settings = get_settings()
    if not any(name in os.environ for name in BLAS_THREADS_ENV):
        os.environ.update(dict.fromkeys(BLAS_THREADS_ENV, "1"))
    metrics_dir = None
    if settings.api_workers > 1 and not os.environ.get(MULTIPROC_ENV):
        remove_stale_metrics_dirs()
        metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        if "prometheus_client" in sys.modules:
            # imported before the folder was set, it chose in-process values; the workers are forked
            # from this process and inherit that choice, so it is made again now
            from prometheus_client import values

            values.ValueClass = values.get_value_class()
    base = f"http://{settings.api_host}:{settings.api_port}"
    print(f"recsys API on {base} (docs {base}/docs, {settings.api_workers} worker(s))", flush=True)
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.api_host,
        "port": settings.api_port,
        "workers": settings.api_workers,
        "timeout_graceful_shutdown": 10,
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
    }
    try:
        if settings.api_workers > 1 and reuse_port_supported():
            # one listening socket per worker, so kept-alive connections spread (serving/workers.py)
            ReusePortMultiprocess(uvicorn.Config(APP, **options)).run()
        else:
            uvicorn.run(APP, **options)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
