"""`mlflow run .` as a user types it: the project's entry points in a subprocess, against a real
SQLite store (and, for `main`, the real broker). The `train` entry point trains the windows of the
module's shared training (tests/training/conftest.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow import MlflowClient

from pipelines.config import PROJECT_ROOT
from pipelines.ingest.window_files import read_manifests

if TYPE_CHECKING:
    from tests.conftest import Training

pytestmark = pytest.mark.spark

NAME = "customer-segmentation"


@pytest.mark.slow
def test_mlflow_run_train_entry_point(
    training: Training, tracking_uri: str, tmp_path: Path
) -> None:
    """`mlflow run . -e train --env-manager local`: the window runs are children of the project
    run and land in the same store and registry."""
    client = MlflowClient(tracking_uri)
    client.create_experiment(NAME, artifact_location=(tmp_path / "artifacts").as_uri())
    _mlflow_run(
        _project_env(tracking_uri),
        "train",
        "-P",
        f"windows-dir={training.windows_dir}",
        "-P",
        "k=4",
    )

    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    project_run, *window_runs = runs
    assert project_run.data.params["windows-dir"] == str(training.windows_dir)
    assert [r.info.run_name for r in window_runs] == ["window-1", "window-2", "window-3"]
    assert all(r.data.tags["mlflow.parentRunId"] == project_run.info.run_id for r in window_runs)
    assert project_run.data.tags["registered_versions"] == "model1=v1, model2=v2, model3=v3"
    for window in (1, 2, 3):
        assert int(client.get_model_version_by_alias(NAME, f"model{window}").version) == window


@pytest.mark.kafka
@pytest.mark.slow
def test_mlflow_run_main_through_the_broker(
    kafka_bootstrap: str, unique_topic: Callable[[str], str], tracking_uri: str, tmp_path: Path
) -> None:
    """`mlflow run . -e main`: generate -> produce -> consume -> train against the real broker."""
    client = MlflowClient(tracking_uri)
    client.create_experiment(NAME, artifact_location=(tmp_path / "artifacts").as_uri())
    topic = unique_topic("main")
    env = _project_env(
        tracking_uri,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_TOPIC=topic,
        KAFKA_GROUP=f"{topic}-windows",
        DATA_DIR=str(tmp_path / "data"),
    )
    _mlflow_run(env, "main", "-P", "rows=20000")

    experiment = client.get_experiment_by_name(NAME)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"window-1", "window-2", "window-3"} <= set(runs)
    manifests = read_manifests(tmp_path / "data" / "windows")
    assert [m.window for m in manifests] == [1, 2, 3]
    assert sum(m.rows for m in manifests) == 20_000
    assert {m.topic for m in manifests} == {topic}
    for window in (1, 2, 3):
        run = runs[f"window-{window}"]
        assert run.data.params["kafka_topic"] == topic
        version = client.get_model_version_by_alias(NAME, f"model{window}")
        assert (int(version.version), version.run_id) == (window, run.info.run_id)


def _project_env(uri: str, **extra: str) -> dict[str, str]:
    """The environment of an `mlflow run` subprocess: this venv first on PATH (the entry points
    call `python`), the tmp store, two Spark cores."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "SPARK_MASTER": "local[2]"}
    return env | extra


def _mlflow_run(env: dict[str, str], entry_point: str, *parameters: str) -> None:
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(PROJECT_ROOT),
        "-e",
        entry_point,
        "--env-manager",
        "local",
        "--experiment-name",
        NAME,
        *parameters,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout}\n{done.stderr[-4000:]}"
