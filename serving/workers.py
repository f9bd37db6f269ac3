"""uvicorn's worker supervisor with one listening socket per worker (`SO_REUSEPORT`).

uvicorn's own `Multiprocess` binds one socket and shares it: the worker that wakes first accepts
every connection waiting, so a few kept-alive clients that connect together all land on one worker
and the others idle (docs/benchmarks.md, batch ingestion: one core busy, 3,200-3,800 events/s). Here
the supervisor binds one socket per worker slot on the same address, all with `SO_REUSEPORT`: the
kernel spreads new connections over the slots by a hash of their addresses, so connections opened
together go to different workers (by hash, not in turns: 4 clients on 2 workers split 2/2 or 3/1
most of the time, 4/0 one time in eight).

The supervisor keeps every slot's socket open. A worker that dies (kill -9 included) is replaced on
the same slot with the same socket, so connections queued on it wait for the replacement rather than
being reset, as they did on the shared socket. Everything else is uvicorn's: health checks, restarts,
graceful shutdown on SIGINT/SIGTERM, SIGHUP to replace every worker, SIGTTIN/SIGTTOU to add or remove one.
"""

from __future__ import annotations

import logging
import socket
import sys

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")


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
        return Process(self.config, [self.slots[idx]])

    def init_processes(self) -> None:
        for idx in range(self.processes_num):
            process = self._process(idx)
            process.start()
            self.processes.append(process)

    def run(self) -> None:
        try:
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
