"""How a launched run's steps execute, chosen by the `executor` setting, and the thread limits of a step
that trains next to others.

* `multiprocess` (default; what Dagster uses for launched runs anyway): every step in its own subprocess,
  `executor_max_concurrent` at once (default 1, as the memory limits hold per step; 0: one per core, so the
  per-model candidate steps train side by side);
  each training step then limits OpenMP, MKL, OpenBLAS and torch to cores / concurrent steps threads, so
  two steps on two cores do not each start two threads and fight over them.
* `in_process`: one process, one step after the other (what `execute_in_process` always does: the demo's
  and `python -m recsys_assets pipeline`'s runs).
* `k8s`: dagster-k8s's `k8s_job_executor`, every step its own Kubernetes Job (pod) with the run launcher's
  image, settings and resources (`infra/k8s/dagster-values.yaml`); a step pod uses its own cores. Needs
  `dagster-k8s` (imported only when selected) and a `storage_uri` every pod reaches (Blob), since steps hand
  results to each other through storage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from recsys_assets.contract.settings import Settings

EXECUTORS = ("in_process", "multiprocess", "k8s")
# what every step process imports: Dagster, the definitions, torch (RecBole is imported after its patches, in
# the step; a module that is not installed is skipped by the forkserver)
PRELOAD = ("dagster", "recsys_assets.defs.definitions", "torch")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def concurrent_steps(settings: Settings) -> int:
    """How many steps a multiprocess run executes at once."""
    return settings.executor_max_concurrent or cores()


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor of every job of this configuration (`settings.executor`)."""
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "multiprocess":
        # a forkserver with the training stack imported once: a step process starts warm instead of importing
        # torch and RecBole again (seconds a step)
        start = {"forkserver": {"preload_modules": list(PRELOAD)}}
        return dg.multiprocess_executor.configured(
            {"max_concurrent": concurrent_steps(settings), "start_method": start}
        )
    if settings.executor == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise ImportError(
                "executor=k8s needs the dagster-k8s package (dagster-k8s==0.29.27, the pin matching dagster "
                "1.13.27) in the code location's image; install it, or set RECSYS_EXECUTOR=multiprocess"
            ) from exc
        config: dict[str, Any] = {}
        if settings.executor_max_concurrent:
            config["max_concurrent"] = settings.executor_max_concurrent
        return k8s_job_executor.configured(config) if config else k8s_job_executor
    raise ValueError(f"unknown executor {settings.executor!r}; known: {', '.join(EXECUTORS)}")


def step_threads(settings: Settings) -> int | None:
    """Threads one training step may use: cores / concurrent steps under the multiprocess executor, None (no
    limit: the step has the process's or the pod's cores to itself) otherwise."""
    if settings.executor != "multiprocess":
        return None
    return max(1, cores() // concurrent_steps(settings))


@contextmanager
def thread_limits(threads: int | None) -> Iterator[None]:
    """Within the block, native thread pools (OpenMP, MKL, OpenBLAS through threadpoolctl), torch, and the
    libraries first imported in it (their `*_NUM_THREADS` variables) use at most `threads`; None changes nothing."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    # torch reads OMP_NUM_THREADS when it is first imported; one imported before is told directly
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch is not None and torch_before is not None:
            torch.set_num_threads(torch_before)
