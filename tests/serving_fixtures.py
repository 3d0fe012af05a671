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
from pipelines.data.schema import FEATURES
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
