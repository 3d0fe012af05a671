"""Helpers of the serving tests: the server as a process, and models fitted outside training.

The registered models the tests serve come from the training job (tests/serving/conftest.py);
`fit` is for the tests of model shapes that training never makes: it fits `build_pipeline(k)`, or
a variant, on synthetic heavy-tailed customer features.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import requests
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from infra.ports import free_port
from pipelines.config import PROJECT_ROOT
from pipelines.contract import EXAMPLE_RECORD, FEATURES
from pipelines.training.recipe import build_pipeline

MODEL_NAME = "customer-segmentation"


def synthetic_features(n: int, seed: int = 0) -> np.ndarray:
    """Customer-like rows: log-normal quantity and spend, a few invoices, some returns."""
    rng = np.random.default_rng(seed)
    invoices = rng.geometric(0.3, n).astype(np.float64)
    quantity = np.round(rng.lognormal(4.0, 1.2, n) * invoices)
    amount = np.round(quantity * rng.lognormal(1.0, 0.6, n), 2)
    returns = rng.random(n) < 0.03
    quantity[returns] *= -1
    amount[returns] *= -1
    return np.column_stack([quantity, amount, invoices])


def features_frame(spark: SparkSession, rows: np.ndarray) -> DataFrame:
    """A DataFrame with the FEATURES columns (NumInvoices as a long, as training has it)."""
    data = [(float(q), float(a), int(i)) for q, a, i in rows.tolist()]
    return spark.createDataFrame(data, schema=list(FEATURES))


def fit(spark: SparkSession, k: int, seed: int, n: int = 2000, **kwargs) -> PipelineModel:
    return build_pipeline(k, seed=seed, **kwargs).fit(
        features_frame(spark, synthetic_features(n, seed))
    )


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[None]:
    """Point MLflow at `uri` for the duration of the block."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def wait_for(url: str, status: int = 200, timeout: float = 60.0) -> requests.Response:
    """GET `url` until it answers `status`; fails with the last answer after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(url, timeout=5)
            if last.status_code == status:
                return last
        except requests.ConnectionError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s; last: {last}")


@contextlib.contextmanager
def serving_process(env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m serving` on a free port; yields its base URL and process, stops it after."""
    port = free_port()
    command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port), *args]
    process = subprocess.Popen(
        command, env=os.environ | env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", timeout=60)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process below `pid`, read from /proc."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append((int(stat.parent.name), name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def worker_pids(server_pid: int) -> list[int]:
    """The server's worker processes (its children), oldest first."""
    return sorted(pid for pid, _ in _children(server_pid))


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            found.append((int(stat.parent.name), text[text.index("(") + 1 : text.rindex(")")]))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _tcp_table(port: int, state: str, pid: int | None) -> list[list[str]]:
    """The /proc/net/tcp{,6} lines of local `port` in `state`, of process `pid` when given."""
    inodes = _socket_inodes(pid) if pid is not None else None
    lines = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            mine = inodes is None or fields[9] in inodes
            if fields[1].endswith(f":{port:04X}") and fields[3] == state and mine:
                lines.append(fields)
    return lines


def tcp_sockets(port: int, state: str, pid: int | None = None) -> int:
    """How many TCP sockets on local `port` are in `state` ("0A" LISTEN, "01" ESTABLISHED),
    counting only those of process `pid` when given."""
    return len(_tcp_table(port, state, pid))


def queued_connections(port: int, pid: int) -> int:
    """Connections the kernel has accepted for `pid`'s listening sockets on `port` that the
    process has not taken yet (a listener's receive queue is its accept queue)."""
    return sum(int(fields[4].split(":")[1], 16) for fields in _tcp_table(port, "0A", pid))


class Load:
    """`clients` threads posting back to back, each on its own keep-alive session: the seed
    record, or with `batch`, every other client that batch. Records (status, X-Model-Version,
    body) of each answer and the exception of each request that got none."""

    def __init__(self, url: str, clients: int = 4, batch: list[dict] | None = None) -> None:
        self.url = url
        self.batch = batch
        self.results: list[tuple[int, str | None, bytes, bool]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(batch if i % 2 and batch else None,))
            for i in range(clients)
        ]

    def _run(self, batch: list[dict] | None) -> None:
        body = batch if batch is not None else EXAMPLE_RECORD
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(self.url, json=body, timeout=10)
                    version = response.headers.get("X-Model-Version")
                    answer = (response.status_code, version, response.content, batch is not None)
                    self.results.append(answer)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def recent_versions(self, n: int) -> set[str | None]:
        return {version for _, version, _, _ in self.results[-n:]}
