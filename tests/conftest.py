"""Fixtures shared by the stages: the Kafka cluster the configuration names, the one
SparkSession, fresh MLflow stores and trainings of generated data.

The cluster's address comes from pipelines/config.py, as for every other part of the project:
KAFKA_BOOTSTRAP_SERVERS, else the local cluster of KAFKA_BROKERS nodes from 127.0.0.1:KAFKA_PORT on
(see infra/kafka_broker.py).
Each stage's own fixtures are in its tests/<stage>/conftest.py. Spark and MLflow are imported
inside the fixtures, so tests that need neither never load them.

`make test` runs the files on three pytest-xdist workers: most tests wait on a JVM, a broker or a
subprocess, and the workers overlap those waits. The workers share one broker, and what is costly
to make (a training, a run of the stream service) is made once per run by whichever worker asks
first (`once_per_run`).
"""

from __future__ import annotations

import fcntl
import pickle
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from infra.errors import BrokerError
from infra.kafka_broker import (
    KafkaCluster,
    ensure_cluster,
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

# An xdist worker's __main__ (execnet's) has neither __spec__ nor __file__, which pyspark's
# Connect module (imported by mlflow.spark.log_model) takes for its doctest runner, and exits.
if not hasattr(sys.modules["__main__"], "__file__"):
    sys.modules["__main__"].__file__ = "<pytest-xdist worker>"

T = TypeVar("T")

# The tests that press Ctrl-C (SIGINT to a process or its group) need it handled as at a terminal.
# A run started in the background by a shell without job control (`make test &` in a script)
# ignores SIGINT, and the processes the tests start would inherit that: a Python handler instead
# is reset to the default in every program they exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created), held by one worker of the run at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and getattr(config.option, "dist", "no") != "no"


def once_per_run(
    factory: pytest.TempPathFactory, worker_id: str, name: str, make: Callable[[], T]
) -> T:
    """`make()`'s result, made once for the whole run: under xdist the first worker to ask makes
    and pickles it into the run's shared temp dir, the others read it (the pattern of
    pytest-xdist's docs). What it names (stores, window files) must be only read afterwards."""
    if worker_id == "master":
        return make()
    shared = factory.getbasetemp().parent / f"once-{name}"
    with _locked(shared.with_suffix(".lock")):
        if shared.exists():
            return pickle.loads(shared.read_bytes())
        result = make()
        shared.write_bytes(pickle.dumps(result))
        return result


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with slow tests first, in pytest-randomly's order otherwise (a stable sort).

    xdist hands out whole files (`--dist loadfile`) in collection order (`--no-loadscope-reorder`;
    by default it orders them by their number of tests, which put the one-test quick start, the
    longest file, last). Longest first is what keeps the workers' finishing times together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def kafka_bootstrap(worker_id: str) -> Iterator[str]:
    """The configured cluster's bootstrap address, started for this run if need be.

    When the configuration names the local cluster and none answers there, one is started from
    SESSION_BROKER_DIR (KAFKA_BROKERS nodes) and stopped when the run ends (by the xdist
    controller, once every worker is done: `pytest_unconfigure`), so `make test` alone needs
    nothing started first; a cluster someone else started is used and left running. Another
    cluster (KAFKA_BOOTSTRAP_SERVERS) that does not answer fails loudly: nothing is skipped.
    """
    try:
        with _locked(SESSION_BROKER_DIR.with_suffix(".lock")):
            bootstrap, _ = ensure_cluster(SESSION_BROKER_DIR)
    except BrokerError as error:
        pytest.fail(f"no Kafka cluster for the tests: {error}", pytrace=False)
    try:
        yield bootstrap
    finally:
        if worker_id == "master":
            _stop_session_cluster()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _is_xdist_controller(config):
        _stop_session_cluster()


def _stop_session_cluster() -> None:
    """A node running from SESSION_BROKER_DIR, if any, is a test run's: this one started it, or
    one that was killed left it."""
    if SESSION_BROKER_DIR.exists():
        stop_cluster(SESSION_BROKER_DIR)


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
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, worker_id: str
) -> Callable[..., Training]:
    """``train_generated(rows, seed, **train_windows_options)``: generate `rows` transactions, cut
    them into three windows as the consumer would (`write_windows`) and train them with
    `train_windows` into a new SQLite store, once per run for the same arguments. Callers must
    not add versions to it or move its aliases: tests that do train into `tracking_uri`.
    """
    import mlflow

    from pipelines.config import sqlite_tracking_uri
    from pipelines.data.generator import generate_dataset
    from pipelines.ingest.window_files import write_windows
    from pipelines.train import train_windows

    made: dict[str, Training] = {}

    def train(rows: int, seed: int = 7, **options: object) -> Training:
        name = f"trained-{rows}-{seed}-" + "-".join(f"{k}={v}" for k, v in sorted(options.items()))
        if name not in made:
            made[name] = once_per_run(
                tmp_path_factory, worker_id, name, lambda: make(rows, seed, **options)
            )
        return made[name]

    def make(rows: int, seed: int, **options: object) -> Training:
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
