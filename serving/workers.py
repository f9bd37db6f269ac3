"""uvicorn's worker supervisor with one listening socket per worker (`SO_REUSEPORT`).

uvicorn's own `Multiprocess` binds one socket and shares it: the worker that wakes first accepts
every connection waiting, so a few kept-alive clients that connect together all land on one worker
and the others idle (docs/benchmarks.md, batch ingestion: one core busy, 3,200-3,800 events/s). Here
the supervisor binds one socket per worker slot on the same address, all with `SO_REUSEPORT`: the
kernel spreads new connections over the slots by a hash of their addresses, so connections opened
together go to different workers (by hash, not in turns: 4 clients on 2 workers split 2/2 or 3/1
most of the time, 4/0 one time in eight).

Workers are forked from the supervisor, not spawned (uvicorn's default): the supervisor imports the
app's modules first (numpy, scipy, usearch, Litestar, the serving code) and freezes them out of the
garbage collector's sweeps, so the workers share those ~100 MB of interpreter heap copy-on-write
instead of each importing its own copy (docs/benchmarks.md, "Serving at scale, re-measured"). A forked
worker first closes what it inherited but does not own (the other slots' sockets, the other workers'
health-check pipes), so closing a slot's socket in the supervisor still stops the kernel sending it
connections, and restores the default action of the signals the supervisor catches. Code changes
need a restart of the whole server: SIGHUP replaces the workers from the supervisor's imported code.

The supervisor keeps every slot's socket open. A worker that dies (kill -9 included) is replaced on
the same slot with the same socket, so connections queued on it wait for the replacement rather than
being reset, as they did on the shared socket. Everything else is uvicorn's: health checks, restarts,
graceful shutdown on SIGINT/SIGTERM, SIGHUP to replace every worker, SIGTTIN/SIGTTOU to add or remove one.
"""

from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Protocol

from uvicorn._subprocess import subprocess_started
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess, Process

logger = logging.getLogger("uvicorn.error")
_FORK = multiprocessing.get_context("fork")


class _Closable(Protocol):
    def close(self) -> None: ...


def preload(app: str) -> None:
    """Import the module of `app` ("module:attribute") and everything it imports, then move every object
    made so far out of the collector's generations (`gc.freeze`): a forked worker's collections then
    do not write to those objects' pages, which stay shared with the supervisor and the other workers."""
    importlib.import_module(app.split(":", 1)[0])
    gc.collect()
    gc.freeze()


def _forked_worker(
    config: Config, target: Callable[..., None], sockets: list[socket.socket], inherited: Sequence[_Closable]
) -> None:
    """A forked worker's first steps: what a spawned worker would not have inherited is closed or reset."""
    for sig in SIGNALS:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    for obj in inherited:
        obj.close()
    subprocess_started(config, target, sockets, stdin_fileno=None)


class ForkedProcess(Process):
    """uvicorn's worker `Process`, forked rather than spawned; it closes `inherited` when it starts."""

    def __init__(self, config: Config, sockets: list[socket.socket], inherited: Sequence[_Closable]) -> None:
        self.config = config
        self._server = None
        self.parent_conn: Connection
        self.child_conn: Connection
        self.parent_conn, self.child_conn = _FORK.Pipe()
        kwargs = {"config": config, "target": self.target, "sockets": sockets}
        self.process = _FORK.Process(  # type: ignore[assignment]
            target=_forked_worker, kwargs={**kwargs, "inherited": [*inherited, self.parent_conn]}
        )


def reuse_port_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def claim_port(host: str, port: int) -> int:
    """The port, checked free (0: one the system picks). `SO_REUSEPORT` alone would let a second server
    of the same user share a port a first one listens on; a plain bind fails there, as uvicorn's does."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def bind_reuse_port(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on (host, port) that other sockets of this user may bind too."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class ReusePortMultiprocess(Multiprocess):
    """`Multiprocess` whose worker number i always serves slot i's own `SO_REUSEPORT` socket."""

    def __init__(self, config: Config) -> None:
        try:
            port = claim_port(config.host, config.port)
            self.slots = [bind_reuse_port(config.host, port, config.backlog) for _ in range(config.workers)]
        except OSError as exc:
            logger.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
            sys.exit(STARTUP_FAILURE)
        logger.info(
            "Uvicorn running on http://%s:%d (Press CTRL+C to quit); one SO_REUSEPORT socket per worker",
            config.host,
            port,
        )
        super().__init__(config, sockets=[])

    def _process(self, idx: int) -> Process:
        own = self.slots[idx]
        others: list[_Closable] = [sock for sock in self.slots if sock is not own]
        for process in self.processes:
            others += [process.parent_conn, process.child_conn]
        return ForkedProcess(self.config, [own], others)

    def init_processes(self) -> None:
        for idx in range(self.processes_num):
            process = self._process(idx)
            process.start()
            self.processes.append(process)

    def run(self) -> None:
        try:
            if isinstance(self.config.app, str):
                preload(self.config.app)
            super().run()
        finally:
            for sock in self.slots:
                sock.close()

    def restart_all(self) -> None:
        """Replaces each worker, its replacement serving before the old one stops (as uvicorn's)."""
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._process(idx)
            new_process.start()
            if not new_process.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(
                        "New child process [%s] was not ready in time; keeping worker [%s] and aborting the restart.",
                        new_process.pid,
                        old_process.pid,
                    )
                return
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # failed before serving: the app or its settings are broken, and a restart fails alike
                logger.error("Child process [%s] failed to start, stopping the parent process.", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info("Child process [%s] died", process.pid)
            self.processes[idx] = self._process(idx)
            self.processes[idx].start()

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.slots.append(bind_reuse_port(self.config.host, self.slots[0].getsockname()[1], self.config.backlog))
        self.processes_num += 1
        process = self._process(len(self.processes))
        process.start()
        self.processes.append(process)

    def handle_ttou(self) -> None:
        logger.info("Received SIGTTOU, decreasing number of processes.")
        if self.processes_num <= 1:
            logger.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        self.processes_num -= 1
        process = self.processes.pop()
        # stop the kernel sending it connections first, then let it finish the ones it has
        self.slots.pop().close()
        process.terminate()
        process.join()
