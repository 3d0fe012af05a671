"""The server under hostile or unlucky conditions, over real HTTP against `python -m serving`:
clients that send their headers or body slowly or never, a worker killed under load, too many
requests at once, a stop while requests are in progress. Each case takes a few seconds."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pipelines.contract import EXAMPLE_RECORD
from tests.serving_fixtures import (
    Load,
    queued_connections,
    serving_process,
    tcp_sockets,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.spark

SEED_BODY = json.dumps(EXAMPLE_RECORD).encode()
PREDICT = "/predict_cluster_model1"


def _env(store: str, tmp_path: Path) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": store, "SERVING_LOG_FILE": str(tmp_path / "serving.log")}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(port: int, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _post_head(length: int) -> bytes:
    return (
        f"POST {PREDICT} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


@contextlib.contextmanager
def _open_files(n: int) -> Iterator[None]:
    """Room for `n` more sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 4096), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    env = _env(store, tmp_path_factory.mktemp("front-logs"))
    with serving_process(env, "--workers", "2") as (url, process):
        wait_for(f"{url}/ready")
        yield url, process


def test_slow_and_silent_clients_do_not_hold_up_the_others(server: tuple[str, object]) -> None:
    url, _ = server
    port = _port(url)
    half_open, trickling = [], []
    stop = threading.Event()

    def trickle() -> None:  # one byte per second on each, far from the 1000 announced
        while not stop.wait(1.0):
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.send(b" ")

    with _open_files(1300):
        try:
            for _ in range(1000):  # a request line and one header, then nothing
                half_open.append(
                    _connect(port, f"GET /health HTTP/1.1\r\nHost: {port}\r\n".encode())
                )
            for _ in range(200):
                trickling.append(_connect(port, _post_head(1000) + b"["))
            threading.Thread(target=trickle, daemon=True).start()
            # Normal clients meanwhile: each on a fresh connection, for about 4 seconds.
            latencies, statuses = [], []
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                begin = time.perf_counter()
                response = requests.post(
                    url + PREDICT, json=EXAMPLE_RECORD, headers={"Connection": "close"}, timeout=5
                )
                latencies.append(time.perf_counter() - begin)
                statuses.append(response.status_code)
                time.sleep(0.05)
        finally:
            stop.set()
            for sock in half_open + trickling:
                sock.close()
    assert set(statuses) == {200}, statuses
    assert len(statuses) >= 20
    assert max(latencies) < 1.0, f"slowest normal request took {max(latencies):.3f} s"


def test_a_killed_worker_costs_only_its_requests_in_flight(server: tuple[str, object]) -> None:
    url, process = server
    port = _port(url)
    before = worker_pids(process.pid)
    assert len(before) == 2
    with Load(url + PREDICT, clients=32) as load:
        time.sleep(1.5)
        victim = before[0]
        # Stopped first, so that no connection reaches it between the count and the kill. Each
        # of its connections carries at most one request at a time (no pipelining); those the
        # kernel queued for it and it had not accepted yet are lost with it too.
        os.kill(victim, signal.SIGSTOP)
        time.sleep(0.2)
        in_flight = tcp_sockets(port, "01", pid=victim) + queued_connections(port, victim)
        answered_before = len(load.results)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # back: a new worker, listening once it has loaded
            pids = worker_pids(process.pid)
            if len(pids) == 2 and victim not in pids and tcp_sockets(port, "0A") == 2:
                break
            time.sleep(0.1)
        time.sleep(1)
    failed = len(load.failures) + sum(status != 200 for status, _, _, _ in load.results)
    print(
        f"\n32 clients; the killed worker held {in_flight} connections (open or queued), each "
        f"with one request in flight at most; {failed} requests failed; "
        f"{len(load.results) - answered_before} answered after the kill"
    )
    assert failed <= in_flight, load.failures[:5]
    after = worker_pids(process.pid)
    assert len(after) == 2 and victim not in after, "the killed worker was not replaced"
    assert tcp_sockets(port, "0A") == 2, "the new worker does not listen"
    # New connections reach both workers, the new one included.
    for _ in range(20):
        response = requests.post(
            url + PREDICT, json=EXAMPLE_RECORD, headers={"Connection": "close"}
        )
        assert response.status_code == 200


@pytest.fixture(scope="module")
def strict_server(
    store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, object]]:
    """One worker with short timeouts and room for 4 requests at a time."""
    env = _env(store, tmp_path_factory.mktemp("strict-logs"))
    args = ["--workers", "1", "--header-timeout", "1", "--body-timeout", "2", "--max-requests", "4"]
    with serving_process(env, *args) as (url, process):
        wait_for(f"{url}/ready")
        yield url, process


def test_slow_headers_slow_bodies_and_silence_are_cut_off(
    strict_server: tuple[str, object],
) -> None:
    port = _port(strict_server[0])
    begin = time.monotonic()
    silent = _connect(port)
    half_open = _connect(port, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    slow_body = _connect(port, _post_head(len(SEED_BODY)) + SEED_BODY[:5])
    kept_alive = _connect(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")

    assert _read_all(silent) == b""  # closed without a word: it never sent a request
    assert _read_all(half_open) == b""
    assert _read_all(kept_alive) == b""  # idle past the header timeout
    answer = _read_all(slow_body)
    elapsed = time.monotonic() - begin
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body) == {"error": "the request body did not arrive within 2 seconds"}
    assert elapsed < 5


def test_requests_beyond_the_limit_get_503_at_once(strict_server: tuple[str, object]) -> None:
    url, _ = strict_server
    port = _port(url)
    waiting = [_connect(port, _post_head(len(SEED_BODY)) + SEED_BODY[:5]) for _ in range(4)]
    try:
        time.sleep(0.3)
        begin = time.perf_counter()
        refused = requests.post(url + PREDICT, json=EXAMPLE_RECORD, timeout=5)
        assert time.perf_counter() - begin < 0.5
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "limit of 4 requests" in refused.json()["error"]
        for sock in waiting:  # the four finish their bodies and are answered
            sock.sendall(SEED_BODY[5:])
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in waiting:
            sock.close()
    assert requests.post(url + PREDICT, json=EXAMPLE_RECORD, timeout=5).status_code == 200


def test_sigterm_finishes_requests_in_progress(store: str, tmp_path: Path) -> None:
    with serving_process(_env(store, tmp_path), "--workers", "2") as (url, process):
        wait_for(f"{url}/ready")
        port = _port(url)
        # Requests in progress: each has sent its headers and part of its body.
        started = [_connect(port, _post_head(len(SEED_BODY)) + SEED_BODY[:10]) for _ in range(6)]
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(1)
        with pytest.raises(OSError):  # no new connections once stopping
            _connect(port).close()
        for sock in started:
            sock.sendall(SEED_BODY[10:])
        answers = [_read_all(sock) for sock in started]
        assert all(a.startswith(b"HTTP/1.1 200") and b'{"cluster": ' in a for a in answers), answers
        assert process.wait(timeout=20) == 0
