"""Fixtures of the stream service tests: a small generated stream, and one undisturbed run of
the service over it that the other tests compare with (the broker's fixtures: tests/conftest.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.config import Settings, sqlite_tracking_uri
from pipelines.data.generator import write_dataset
from pipelines.ingest.producer import replay
from pipelines.service.gate import Gate
from pipelines.service.ledger import WINDOW_DIGEST_TAG, WINDOW_TAG
from pipelines.service.loop import Service
from pipelines.training.fitting import Spec
from tests.conftest import once_per_run

# The generator gives ~8 customers per 1,000 rows: three windows of a few hundred customers.
ROWS = 20_000
WINDOWS = 3
# One k per fit, the cheapest recipe: what these tests check is the flow (windows, versions,
# tags, aliases, restarts), not the choice of k (tests/training/). The generated customers split
# in three with no tiny cluster.
SPEC = Spec(k=3)
# The same choices as flags, for the service run as a command.
SPEC_FLAGS = ("--k", "3")


@dataclass(frozen=True)
class StreamRun:
    """Where one run of the service left its windows and its store."""

    settings: Settings
    windows_dir: Path

    @property
    def uri(self) -> str:
        return self.settings.mlflow_tracking_uri


def snapshot(uri: str, name: str) -> tuple[list[tuple[int, str, str, str, str]], dict[str, int]]:
    """The registry as the tests compare it: (version, window, digest, verdict, k) per version,
    in order, and alias -> version."""
    client = MlflowClient(uri)
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    rows = [
        (int(v.version), v.tags[WINDOW_TAG], v.tags[WINDOW_DIGEST_TAG], v.tags["gate"], v.tags["k"])
        for v in versions
    ]
    aliases = {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}
    return rows, aliases


@pytest.fixture(scope="session")
def stream_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("stream") / "retail.csv", rows=ROWS, seed=11)


@pytest.fixture
def replayed(kafka_bootstrap: str, stream_dataset: Path, tmp_path: Path) -> Settings:
    """The dataset replayed into a topic of its own; settings naming it and a fresh store."""
    return _replayed(kafka_bootstrap, stream_dataset, tmp_path)


@pytest.fixture(scope="session")
def undisturbed(
    kafka_bootstrap: str,
    stream_dataset: Path,
    spark: SparkSession,
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
) -> StreamRun:
    """The service run in this process over the replayed stream until window 3 is handled, once
    per test run (tests/conftest.py's `once_per_run`)."""

    def run() -> StreamRun:
        root = tmp_path_factory.mktemp("undisturbed")
        settings = _replayed(kafka_bootstrap, stream_dataset, root)
        previous = mlflow.get_tracking_uri()
        try:
            service = Service(settings, root / "windows", SPEC, Gate.of(SPEC), spark)
            service.run(until_window=WINDOWS)
        finally:
            mlflow.set_tracking_uri(previous)
        return StreamRun(settings, root / "windows")

    return once_per_run(tmp_path_factory, worker_id, "undisturbed", run)


def _replayed(bootstrap: str, dataset: Path, root: Path) -> Settings:
    topic = f"stream-{uuid.uuid4().hex[:12]}"
    settings = replace(
        Settings.from_env(),
        kafka_bootstrap_servers=bootstrap,
        kafka_topic=topic,
        kafka_group=f"{topic}-windows",
        mlflow_tracking_uri=sqlite_tracking_uri(root / "store"),
    )
    replay(dataset, settings, progress=False)
    return settings
