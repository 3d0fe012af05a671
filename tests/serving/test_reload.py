"""Hot reload under load: train a new version, move the alias, and the running server (2 workers)
switches to it while 32 clients post single records and batches, without a single failed request;
every answer comes whole from the old version or the new one.

Each test trains window 1 of the session's generated windows (tests/serving/conftest.py) with the
training job into a store of its own, twice: the alias then moves while the server runs (under load,
by the registry call that ends a training, so that Spark does not share the cores with the load)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.contract import EXAMPLE_RECORD, FEATURES
from pipelines.train import train_windows
from serving.registry import ModelRegistry
from tests.serving_fixtures import Load, serving_process, synthetic_features, wait_for

if TYPE_CHECKING:
    from tests.conftest import Training

pytestmark = pytest.mark.spark

BATCH = [dict(zip(FEATURES, row, strict=True)) for row in synthetic_features(40, seed=7).tolist()]


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


def _batch_answer(uri: str, model_name: str) -> list[int]:
    """What model1's version answers for BATCH, computed here with the server's own reader."""
    model = ModelRegistry(uri, model_name, ("model1",)).refresh()["model1"].model.model
    rows = np.array([[r[c] for c in model.input_cols] for r in BATCH], dtype=np.float64)
    return model.predict(rows).tolist()


def _env(uri: str, tmp_path: Path, poll_interval: float) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": uri,
        "SERVING_ALIASES": "model1",
        "SERVING_POLL_INTERVAL": str(poll_interval),
        "SERVING_LOG_FILE": str(tmp_path / "serving.log"),
    }


def test_moved_alias_is_served_with_zero_failed_requests(
    retrain: Callable[[int, int], str], trained_store: Training, tracking_uri: str, tmp_path: Path
) -> None:
    model_name = trained_store.settings.model_name
    client = MlflowClient(tracking_uri)
    expected = {}
    for k, seed in ((3, 1), (6, 9)):  # both trained first: Spark would slow the load down
        version = retrain(k, seed)
        expected[version] = _batch_answer(tracking_uri, model_name)
    v1, v2 = expected
    assert expected[v1] != expected[v2], "the batch should tell the two versions apart"
    client.set_registered_model_alias(model_name, "model1", v1)
    with serving_process(_env(tracking_uri, tmp_path, poll_interval=0.5), "--workers", "2") as (
        url,
        _,
    ):
        wait_for(f"{url}/ready")
        with Load(f"{url}/predict_cluster_model1", clients=32, batch=BATCH) as load:
            time.sleep(1)
            assert load.recent_versions(50) == {v1}
            client.set_registered_model_alias(model_name, "model1", v2)  # what training does last
            deadline = time.monotonic() + 60
            while load.recent_versions(200) != {v2} and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)

        statuses = Counter(status for status, _, _, _ in load.results)
        versions_seen = Counter(version for _, version, _, _ in load.results)
        assert load.failures == []
        assert statuses.keys() == {200}, statuses
        assert versions_seen.keys() == {v1, v2}, versions_seen
        assert load.recent_versions(200) == {v2}
        batches = [(v, json.loads(body)) for _, v, body, is_batch in load.results if is_batch]
        assert {v for v, _ in batches} == {v1, v2}
        for version, body in batches:  # each batch whole from the version it names, never a mix
            assert body == {"clusters": expected[version]}, version
        metrics = requests.get(f"{url}/metrics").text
        assert f'serving_model_version{{alias="model1"}} {float(v2)}' in metrics


def test_admin_reload_reaches_every_worker_before_it_answers(
    retrain: Callable[[int, int], str], tracking_uri: str, tmp_path: Path
) -> None:
    v1 = retrain(3, 1)
    env = _env(tracking_uri, tmp_path, poll_interval=600)  # no poll picks the move up in the test
    with serving_process(env, "--workers", "2") as (url, _):
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
            f"{url}/predict_cluster_model1", json=EXAMPLE_RECORD, headers={"Connection": "close"}
        ).headers.get("X-Model-Version")
        for _ in range(n)
    }
