"""Hot reload under load: the alias moves to a newly trained version while 32 clients post single
records and batches to the running server (2 workers), which switches without a single failed
request; every answer comes whole from the old version or the new one."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from pipelines.schema import FEATURES
from serving.registry import ModelRegistry
from tests.serving_fixtures import (
    MODEL_NAME,
    SEED_JSON,
    Load,
    fit,
    local_spark,
    register,
    serving_process,
    synthetic_features,
    tracking,
    tracking_uri,
    wait_for,
)

pytestmark = pytest.mark.spark

BATCH = [dict(zip(FEATURES, row, strict=True)) for row in synthetic_features(40, seed=7).tolist()]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A store with two trainings of model1 (k=3, then k=6), the alias on the first.

    Returns the store's URI and the two versions."""
    uri = tracking_uri(tmp_path_factory.mktemp("reload-store"))
    spark = local_spark()
    with tracking(uri):
        v1, v2 = (
            register(spark, fit(spark, k, seed=seed), model_name=MODEL_NAME, alias="model1", **kw)
            for k, seed, kw in ((3, 1, {"window": 1, "k": 3}), (6, 9, {"window": 2, "k": 6}))
        )
    _move_model1(uri, v1)
    return uri, v1, v2


def _move_model1(uri: str, version: str) -> None:
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(
        MODEL_NAME, "model1", version
    )


def _batch_answers(uri: str, versions: tuple[str, ...]) -> dict[str, list[int]]:
    """What each version answers for BATCH, computed here with the server's own reader."""
    answers = {}
    for version in versions:
        _move_model1(uri, version)
        registry = ModelRegistry(uri, MODEL_NAME, ("model1",))
        model = registry.refresh()["model1"].model.model
        rows = np.array([[r[c] for c in model.input_cols] for r in BATCH], dtype=np.float64)
        answers[version] = model.predict(rows).tolist()
    return answers


def _env(uri: str, tmp_path: Path, poll_interval: float) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": uri,
        "SERVING_ALIASES": "model1",
        "SERVING_POLL_INTERVAL": str(poll_interval),
        "SERVING_LOG_FILE": str(tmp_path / "serving.log"),
    }


def test_moved_alias_is_served_with_zero_failed_requests(
    versions: tuple[str, str, str], tmp_path: Path
) -> None:
    uri, v1, v2 = versions
    expected = _batch_answers(uri, (v2, v1))  # leaves the alias on v1
    assert expected[v1] != expected[v2], "the batch should tell the two versions apart"
    with serving_process(_env(uri, tmp_path, poll_interval=0.5), "--workers", "2") as (url, _):
        wait_for(f"{url}/ready")
        with Load(f"{url}/predict_cluster_model1", clients=32, batch=BATCH) as load:
            time.sleep(1)
            assert load.recent_versions(50) == {v1}
            _move_model1(uri, v2)
            deadline = time.monotonic() + 30
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
    versions: tuple[str, str, str], tmp_path: Path
) -> None:
    uri, v1, v2 = versions
    _move_model1(uri, v1)
    env = _env(uri, tmp_path, poll_interval=600)  # no poll picks the move up during the test
    with serving_process(env, "--workers", "2") as (url, _):
        wait_for(f"{url}/ready")
        _move_model1(uri, v2)
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
