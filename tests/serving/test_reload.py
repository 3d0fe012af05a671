"""Hot reload under load: train a new version, move the alias, and the running server (gunicorn,
2 workers) switches to it without a single failed request.

Each test trains window 1 of the session's generated windows (tests/serving/conftest.py) with the
training job into a store of its own, once before the server starts and once while it runs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from pyspark.sql import SparkSession

from pipelines.train import train_windows
from tests.serving_fixtures import serving_process, wait_for

if TYPE_CHECKING:
    from tests.conftest import Training

pytestmark = pytest.mark.spark

SEED_JSON = {"TotalQuantity": 100, "TotalAmount": 2000.0, "NumInvoices": 5}


class Load:
    """Client threads posting the seed request back to back, each on its own keep-alive session."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.results: list[tuple[int, str | None]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(self.url, json=SEED_JSON, timeout=10)
                    self.results.append(
                        (response.status_code, response.headers.get("X-Model-Version"))
                    )
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
        return {version for _, version in self.results[-n:]}


@pytest.fixture
def retrain(
    spark: SparkSession, trained_store: Training, tracking_uri: str
) -> Callable[[int, int], str]:
    """``retrain(k, seed)``: train window 1 into the test's store, which registers a new version
    and moves alias model1 to it; returns the version."""

    def train(k: int, seed: int) -> str:
        settings = replace(trained_store.settings, mlflow_tracking_uri=tracking_uri)
        (trained,) = train_windows(
            trained_store.windows_dir, windows=1, k=k, seed=seed, settings=settings, spark=spark
        )
        return str(trained.version)

    return train


def _env(uri: str, tmp_path: Path, poll_interval: float) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": uri,
        "SERVING_ALIASES": "model1",
        "SERVING_POLL_INTERVAL": str(poll_interval),
        "SERVING_LOG_FILE": str(tmp_path / "serving.log"),
    }


def test_moved_alias_is_served_with_zero_failed_requests(
    retrain: Callable[[int, int], str], tracking_uri: str, tmp_path: Path
) -> None:
    v1 = retrain(3, 1)
    env = _env(tracking_uri, tmp_path, poll_interval=0.5)
    with serving_process(env, "--workers", "2", "--threads", "4") as (url, _):
        wait_for(f"{url}/ready")
        with Load(f"{url}/predict_cluster_model1") as load:
            time.sleep(1)
            assert load.recent_versions(20) == {v1}
            v2 = retrain(6, 9)
            deadline = time.monotonic() + 60
            while load.recent_versions(200) != {v2} and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)

        statuses = Counter(status for status, _ in load.results)
        versions = Counter(version for _, version in load.results)
        assert load.failures == []
        assert statuses.keys() == {200}, statuses
        assert versions.keys() == {v1, v2}, versions
        assert load.recent_versions(200) == {v2}
        metrics = requests.get(f"{url}/metrics").text
        assert f'serving_model_version{{alias="model1"}} {float(v2)}' in metrics


def test_admin_reload_reaches_every_worker_before_it_answers(
    retrain: Callable[[int, int], str], tracking_uri: str, tmp_path: Path
) -> None:
    v1 = retrain(3, 1)
    env = _env(
        tracking_uri, tmp_path, poll_interval=600
    )  # no poll picks the move up during the test
    with serving_process(env, "--workers", "2", "--threads", "2") as (url, _):
        wait_for(f"{url}/ready")
        v2 = retrain(5, 3)
        assert _versions_on_fresh_connections(url, 40) == {v1}

        reload = requests.post(f"{url}/admin/reload", timeout=60)

        assert reload.status_code == 200, reload.text
        assert reload.json()["workers"] == {"reloaded": 2, "pending": []}
        assert reload.json()["models"]["model1"]["version"] == int(v2)
        # Each request on a new connection, so both workers answer some of them.
        assert _versions_on_fresh_connections(url, 100) == {v2}


def _versions_on_fresh_connections(url: str, n: int) -> set[str | None]:
    return {
        requests.post(
            f"{url}/predict_cluster_model1", json=SEED_JSON, headers={"Connection": "close"}
        ).headers.get("X-Model-Version")
        for _ in range(n)
    }
