"""Training on a standalone Spark cluster (`make spark-up`) gives the models `local[*]` gives,
and the Spark engine on it writes the kafka-python engine's windows.

The cluster is the real thing, started by infra.spark_cluster on free ports: a master and two
workers whose executors are JVMs of their own. The training runs as a user runs it, with
SPARK_MASTER pointing at the cluster, on the windows an in-process `local[2]` training used; so
does the window consumer, whose executors (decoding, staging) then run in the workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from infra.ports import free_port
from infra.spark_cluster import Cluster, running_daemons, start_cluster, stop_cluster
from pipelines.config import PROJECT_ROOT, Settings, sqlite_tracking_uri
from pipelines.data.generator import write_dataset
from pipelines.ingest.producer import ensure_topic, replay
from pipelines.ingest.window_rule import WindowRule
from pipelines.training import registry
from serving.predictor import SegmentationModel, load_pipeline
from tests.ingest.test_spark_engine import _assert_same_windows, _finish, _kafka_python, _spark

if TYPE_CHECKING:
    from tests.conftest import Training


pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROWS = 6_000
# One window and two candidate k: every job pays the cluster's per-task round trips, and the
# equality of two models does not need more of them.
CHOICES = {"windows": 1, "k_range": (3, 4)}
FLAGS = ("--windows", "1", "--k-min", "3", "--k-max", "4")
RELATIVE = 1e-9  # "the same model": each centre, mean and scale vector equal within this


def assert_close(mine: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Relative to each vector's norm: a coordinate near 0 has no meaningful relative error."""
    mine, theirs = np.atleast_2d(mine), np.atleast_2d(theirs)
    gaps = np.linalg.norm(mine - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    assert gaps.max() <= RELATIVE, f"{what}: relative gaps {gaps}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state_dir = tmp_path_factory.mktemp("spark-cluster")
    started = start_cluster(state_dir, port=free_port(), ui_port=free_port(), workers=2)
    yield started
    stop_cluster(state_dir)
    assert running_daemons(state_dir) == {}


def model_of(uri: str, model_name: str, alias: str, into: Path) -> SegmentationModel:
    version = MlflowClient(uri).get_model_version_by_alias(model_name, alias)
    mlflow.set_tracking_uri(uri)
    folder = mlflow.artifacts.download_artifacts(
        f"models:/{model_name}/{version.version}", dst_path=str(into)
    )
    return load_pipeline(Path(folder) / "sparkml")


def test_the_cluster_runs_a_master_and_two_workers(cluster: Cluster) -> None:
    assert cluster.url.startswith("spark://127.0.0.1:")
    assert set(cluster.pids) == {"master", "worker-1", "worker-2"}


def test_training_on_the_cluster_gives_the_local_models(
    cluster: Cluster, train_generated: Callable[..., Training], tmp_path: Path
) -> None:
    local = train_generated(ROWS, **CHOICES)
    uri = sqlite_tracking_uri(tmp_path / "store")
    environment = {**os.environ, "SPARK_MASTER": cluster.url, "MLFLOW_TRACKING_URI": uri}
    command = [sys.executable, "-m", "pipelines.train", "--windows-dir", str(local.windows_dir)]
    command += FLAGS
    subprocess.run(command, env=environment, cwd=PROJECT_ROOT, check=True, timeout=1200)

    previous = mlflow.get_tracking_uri()
    try:
        for position in range(1, len(local.trained) + 1):
            alias = registry.alias_for(position)
            name = local.settings.model_name
            here = model_of(local.uri, name, alias, tmp_path / "local" / alias)
            there = model_of(uri, name, alias, tmp_path / "cluster" / alias)
            assert there.k == here.k, alias
            assert_close(there.kmeans.centers, here.kmeans.centers, f"{alias} centres")
            assert_close(there.scaler.mean, here.scaler.mean, f"{alias} scaler mean")
            assert_close(there.scaler.scale, here.scaler.scale, f"{alias} scaler std")
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.kafka
def test_the_spark_engine_on_the_cluster_writes_the_kafka_python_windows(
    cluster: Cluster, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = replace(
        Settings.from_env(),
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic=f"spark-cluster-{uuid.uuid4().hex[:12]}",
    )
    ensure_topic(kafka_bootstrap, settings.kafka_topic, 3)
    replay(write_dataset(tmp_path / "retail.csv", rows=ROWS, seed=11), settings, progress=False)
    kafka_dir = _kafka_python(settings, tmp_path / "kafka-python", WindowRule(), windows=3)

    _finish(_spark(settings, tmp_path / "spark", "--windows", "3", master=cluster.url))

    _assert_same_windows(tmp_path / "spark", kafka_dir, 3, offsets=True)
