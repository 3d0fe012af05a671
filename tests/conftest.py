"""Fixtures shared by the stages: the Kafka cluster the configuration names, the one
SparkSession, fresh MLflow stores and trainings of generated data.

The cluster's address comes from pipelines/config.py, as for every other part of the project:
KAFKA_BOOTSTRAP_SERVERS, else the local cluster of KAFKA_BROKERS nodes from 127.0.0.1:KAFKA_PORT on
(see infra/kafka_broker.py).
Each stage's own fixtures are in its tests/<stage>/conftest.py. Spark and MLflow are imported
inside the fixtures, so tests that need neither never load them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.errors import BrokerError
from infra.kafka_broker import (
    KafkaCluster,
    ensure_cluster,
    running_cluster,
    start_cluster,
    stop_cluster,
)
from infra.ports import free_port_pair, free_port_run
from pipelines.config import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from pyspark.sql import SparkSession

    from pipelines.training.tracking import TrainedWindow

# Where the test session keeps the cluster it starts: apart from `make kafka-up`'s .kafka/, so that
# a cluster running from here was started by a test session and is that session's to stop.
SESSION_BROKER_DIR = PROJECT_ROOT / "test-artifacts" / "kafka"
# Each node of a test's three-node cluster: CI runs Spark beside it on a shared machine.
CLUSTER_HEAP_OPTS = "-Xmx512m -Xms128m"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The configured cluster's bootstrap address, started for this session if need be.

    When the configuration names the local cluster and none answers there, one is started from
    SESSION_BROKER_DIR (KAFKA_BROKERS nodes) and stopped when the session ends, so `make test`
    alone needs nothing started first; a cluster someone else started is used and left running.
    Another cluster (KAFKA_BOOTSTRAP_SERVERS) that does not answer fails loudly: nothing is
    skipped.
    """
    try:
        bootstrap, started = ensure_cluster(SESSION_BROKER_DIR)
    except BrokerError as error:
        pytest.fail(f"no Kafka cluster for the tests: {error}", pytrace=False)
    # One left running by a session that was killed is this session's to stop as well.
    started = started or running_cluster(SESSION_BROKER_DIR)
    try:
        yield bootstrap
    finally:
        if started is not None:
            stop_cluster(started.state_dir)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[KafkaCluster]:
    """A one-node cluster of this test's own (free ports, state in tmp_path), for stopping and
    restarting."""
    broker = start_cluster(free_port_pair(), tmp_path / "kafka")
    try:
        yield broker
    finally:
        stop_cluster(broker.state_dir)


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    """A three-node cluster of this test's own (six free ports, state in tmp_path), for killing a
    broker of."""
    settings = replace(Settings.from_env(), kafka_heap_opts=CLUSTER_HEAP_OPTS)
    cluster = start_cluster(free_port_run(6), tmp_path / "kafka", brokers=3, settings=settings)
    try:
        yield cluster
    finally:
        stop_cluster(cluster.state_dir)


@pytest.fixture
def unique_topic() -> Callable[[str], str]:
    """``unique_topic("retail")`` -> ``"retail-3f9c0a1b2c4d"``: no test sees another's records."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """The training job's SparkSession on two cores (the machine is shared), one per test run."""
    from pipelines.training.session import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite MLflow store in the test's tmp dir. MLflow's process-wide tracking URI,
    which `train_windows` sets, is put back afterwards."""
    import mlflow

    from pipelines.config import sqlite_tracking_uri

    previous = mlflow.get_tracking_uri()
    yield sqlite_tracking_uri(tmp_path / "store")
    mlflow.set_tracking_uri(previous)


@dataclass(frozen=True)
class Training:
    """What `pipelines.train.train_windows` left after training on generated windows."""

    windows_dir: Path
    transactions: pd.DataFrame
    segments: pd.DataFrame  # the generator's true segment of every customer
    settings: Settings
    trained: list[TrainedWindow]

    @property
    def uri(self) -> str:
        return self.settings.mlflow_tracking_uri

    def run(self, window: int) -> Run:
        from mlflow import MlflowClient

        return MlflowClient(self.uri).get_run(self.trained[window - 1].run_id)


@pytest.fixture(scope="session")
def train_generated(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Training]:
    """``train_generated(rows, seed, **train_windows_options)``: generate `rows` transactions, cut
    them into three windows as the consumer would (`write_windows`) and train them with
    `train_windows` into a new SQLite store. Callers keep the result for their module or session
    and must not add versions to it or move its aliases: tests that do train into `tracking_uri`.
    """
    import mlflow

    from pipelines.config import sqlite_tracking_uri
    from pipelines.data.generator import generate_dataset
    from pipelines.ingest.window_files import write_windows
    from pipelines.train import train_windows

    def train(rows: int, seed: int = 7, **options: object) -> Training:
        root = tmp_path_factory.mktemp(f"trained-{rows}")
        transactions, segments = generate_dataset(rows, seed)
        write_windows(transactions, root / "windows", replay=f"generated-{rows}-{seed}")
        uri = sqlite_tracking_uri(root / "store")
        settings = replace(Settings.from_env(), mlflow_tracking_uri=uri)
        previous = mlflow.get_tracking_uri()
        try:
            trained = train_windows(root / "windows", settings=settings, spark=spark, **options)
        finally:
            mlflow.set_tracking_uri(previous)
        return Training(root / "windows", transactions, segments, settings, trained)

    return train
