"""`python -m serving` with several workers: each listens on its own `SO_REUSEPORT` socket, so kept-alive
connections opened together spread over the workers; the supervisor replaces a killed worker on its
socket and refuses a port another server listens on."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from recsys_assets.tools.services import PROJECT_ROOT, worker_pids
from serving.controllers.responses import WORKER_HEADER
from tests.api_support import API_KEY, RedisServer, api_env

pytestmark = pytest.mark.integration
# 16 connections on 2 workers all hashed to one: 2 in 65,536
CLIENTS = 16


def _worker_of(sock: socket.socket) -> int:
    """Send one `GET /health` on a kept-alive connection; the pid of the worker that answered."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.1 200"), head
    return int(head.split(f"{WORKER_HEADER.lower()}:", 1)[1].split("\r\n", 1)[0])


def pids_per_connection(port: int, clients: int = CLIENTS, requests: int = 3) -> list[set[int]]:
    """For each of `clients` kept-alive connections, all opened before any request (as clients that
    start together do), the worker pids that answered its requests."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(clients)]
    try:
        return [{_worker_of(sock) for _ in range(requests)} for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_kept_alive_connections_spread_over_the_workers(storage: Path, redis_server: RedisServer, start_api) -> None:
    api = start_api(api_env(storage, redis_server.url), workers=2, via_module=True)
    assert api.proc is not None
    workers = set(worker_pids(api.proc.pid))
    assert len(workers) == 2
    seen = pids_per_connection(api.port)
    # a kept-alive connection stays with the worker that accepted it
    assert all(len(pids) == 1 for pids in seen), seen
    assert set().union(*seen) == workers, f"connections on {set().union(*seen)}, workers {workers}"
    # the events endpoint names its worker too
    r = httpx.post(
        f"{api.url}/v1/events",
        json={"user_id": "w1", "item_id": "1", "event_type": "view"},
        headers={"X-API-Key": API_KEY},
    )
    assert r.status_code == 202 and int(r.headers[WORKER_HEADER]) in workers


def test_a_killed_worker_is_replaced_on_its_socket(storage: Path, redis_server: RedisServer, start_api) -> None:
    api = start_api(api_env(storage, redis_server.url), workers=2, via_module=True)
    assert api.proc is not None
    before = set(worker_pids(api.proc.pid))
    victim = min(before)
    subprocess.run(["kill", "-9", str(victim)], check=True)
    deadline = time.monotonic() + 60
    while True:
        now = set(worker_pids(api.proc.pid))
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"worker {victim} not replaced; log:\n{api.log()[-3000:]}"
        time.sleep(0.2)
    # connections hashed to the killed worker's socket are served by its replacement, none refused
    deadline = time.monotonic() + 60
    while True:
        seen = set().union(*pids_per_connection(api.port))
        if seen == now:
            break
        assert seen <= now, f"answered by {seen}, workers {now}"
        assert time.monotonic() < deadline, "the replacement never answered"
        time.sleep(0.5)


def test_a_port_in_use_is_refused(storage: Path, redis_server: RedisServer, start_api, tmp_path: Path) -> None:
    api = start_api(api_env(storage, redis_server.url), workers=2, via_module=True)
    env = {**api.env}
    second = subprocess.run(
        [sys.executable, "-m", "serving"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode != 0
    assert "cannot listen on" in second.stdout + second.stderr
    # the first server still answers everything
    assert httpx.get(f"{api.url}/ready").status_code == 200


def test_a_free_port_binds_one_socket_per_worker() -> None:
    from serving.workers import bind_reuse_port, claim_port

    port = claim_port("127.0.0.1", 0)
    socks = [bind_reuse_port("127.0.0.1", port, 16) for _ in range(3)]
    try:
        assert {s.getsockname()[1] for s in socks} == {port}
        with pytest.raises(OSError), socket.socket() as plain:
            plain.bind(("127.0.0.1", port))
    finally:
        for s in socks:
            s.close()


def _smaps_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        line = next(line for line in fh if line.startswith(f"{field}:"))
    return int(line.split()[1])


def test_workers_share_the_supervisors_imported_heap(storage: Path, redis_server: RedisServer, start_api) -> None:
    """Forked from a supervisor that imported the app, a worker shares that heap: ~68 MB of written
    (anonymous) pages; ~31 MB when the supervisor has imported only uvicorn, none when spawned."""
    api = start_api(api_env(storage, redis_server.url), workers=2, via_module=True)
    assert api.proc is not None
    workers = worker_pids(api.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        shared_mb = _smaps_kb(pid, "Shared_Dirty") / 1024
        assert shared_mb >= 50, f"worker {pid} shares {shared_mb:.1f} MB of written pages with the supervisor"


def test_a_removed_slot_takes_no_more_connections(storage: Path, redis_server: RedisServer, start_api) -> None:
    """SIGTTOU closes a slot's socket in the supervisor; no forked worker keeps a copy of it open, so the
    kernel stops queueing connections there (a copy left open would leave them unanswered)."""
    api = start_api(api_env(storage, redis_server.url), workers=2, via_module=True)
    assert api.proc is not None
    api.proc.send_signal(signal.SIGTTOU)
    deadline = time.monotonic() + 30
    while len(now := worker_pids(api.proc.pid)) != 1:
        assert time.monotonic() < deadline, f"a worker was not removed; log:\n{api.log()[-3000:]}"
        time.sleep(0.2)
    (left,) = now
    # connections that hash to the removed slot would time out (recv) if its socket were still open
    assert set().union(*pids_per_connection(api.port, requests=1)) == {left}
