"""The project against an MLflow tracking server on PostgreSQL (infra/mlflow_server.py), as a team
runs it: `MLFLOW_TRACKING_URI=http://...`, runs and registry in the database, artifacts through
the server's proxy.

One server for the module, started the way `make mlflow-server` starts it but on free ports with
its state in tmp; one training of two small generated windows by the real command
(`python -m pipelines.train`), whose output is kept. Then the registry, the stream service, the
UI's API and the HTTP server each work against that server, and the HTTP server rides out a stop
and restart of it. Slow: the tracking server is started twice, each start over a minute on the
shared two-core machine (a first start also creates MLflow's schema), and the training runs in a
JVM of its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import psycopg
import pytest
import requests
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from infra import mlflow_server
from infra.mlflow_server import (
    TrackingServer,
    database_cluster,
    running_server,
    start_server,
    stop_server,
)
from infra.ports import free_port
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.contract import EXAMPLE_RECORD
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import read_manifests, write_windows
from pipelines.service.gate import Gate
from pipelines.service.ledger import WINDOW_TAG
from pipelines.service.loop import Service
from pipelines.training.fitting import Spec
from pipelines.training.tracking import MODEL_ARTIFACT_PATH
from tests.serving_fixtures import serving_process, wait_for

# The first test's time includes the module's set-up: a tracking server's first start and a
# whole training in a JVM of its own, 3 minutes on a quiet machine, over 10 on a busy one.
pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.timeout(1800)]

NAME = Settings.model_name
ROWS = 14_000  # two windows of a few hundred customers: real models, quickly fitted
WINDOWS = 2  # two versions are enough to move an alias; aliases model1..3 are test_train.py's
K = 4  # one fit per window; the recipe's k selection is tested in test_train.py
SPARK_ERROR = 'No FileSystem for scheme "mlflow-artifacts"'


@dataclass(frozen=True)
class Trained:
    """The module's training through the server: its output and the registry right after it."""

    windows_dir: Path
    output: str
    aliases: dict[str, int]


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    """A tracking server and its PostgreSQL on free ports, state in a new directory of /tmp.

    Not pytest's tmp_path: run as root, PostgreSQL runs as the user `postgres`, which must reach
    its data dir, and pytest's /tmp/pytest-of-root is closed to other users."""
    state = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    state.chmod(0o711)
    try:
        yield start_server(state, free_port(), free_port(), workers=1)
    finally:
        stop_server(state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`python -m pipelines.train` over three generated windows, against the server."""
    windows_dir = tmp_path_factory.mktemp("windows") / "windows"
    transactions, _ = generate_dataset(ROWS, seed=3)
    write_windows(transactions, windows_dir, WINDOWS, replay=f"generated-{ROWS}-3")
    env = os.environ | {"MLFLOW_TRACKING_URI": server.url, "SPARK_MASTER": "local[2]"}
    command = [sys.executable, "-m", "pipelines.train", "--windows-dir", str(windows_dir)]
    done = subprocess.run(
        [*command, "--windows", str(WINDOWS), "--k", str(K)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    registered = MlflowClient(server.url).get_registered_model(NAME)
    return Trained(windows_dir, output, {a: int(v) for a, v in registered.aliases.items()})


def test_training_through_the_server_stores_runs_in_postgresql_and_models_as_proxied_artifacts(
    server: TrackingServer, trained: Trained
) -> None:
    assert SPARK_ERROR not in trained.output
    assert "UnsupportedFileSystemException" not in trained.output
    assert trained.aliases == {"model1": 1, "model2": 2}

    client = MlflowClient(server.url)
    for window in range(1, WINDOWS + 1):
        version = client.get_model_version(NAME, str(window))
        assert version.source.startswith("mlflow-artifacts:/")
        run = client.get_run(version.run_id)
        assert run.info.run_name == f"window-{window}"
        assert MODEL_ARTIFACT_PATH in run.data.tags["mlflow.log-model.history"]
        # The server stored the upload in its own artifacts directory.
        stored = server.state_dir / "artifacts" / version.source.removeprefix("mlflow-artifacts:/")
        assert (stored / "MLmodel").is_file()
        assert (stored / "sparkml" / "metadata").is_dir()

    # The database behind the server is PostgreSQL, and it holds what the client logged.
    libpq_url = server.database_url.replace("+psycopg", "")
    pgpass = database_cluster(server.state_dir).pgpass
    with psycopg.connect(libpq_url, passfile=str(pgpass)) as database:
        versions = database.execute(
            "SELECT version, run_id FROM model_versions WHERE name = %s ORDER BY version", (NAME,)
        ).fetchall()
        assert [number for number, _ in versions] == [1, 2]
        windows = database.execute(
            "SELECT value FROM tags WHERE key = 'window' AND run_uuid = ANY(%s) ORDER BY value",
            ([run_id for _, run_id in versions],),
        ).fetchall()
        assert windows == [("1",), ("2",)]


def test_the_stream_service_registers_each_window_once_through_the_server(
    server: TrackingServer, trained: Trained, spark: SparkSession
) -> None:
    """The service's steps that talk to MLflow (the ledger's lookups by tag, logging,
    registration, the aliases), on the windows already written, under a model of its own; then
    a restarted service finds every window registered and trains nothing."""
    name = f"stream-{uuid.uuid4().hex[:8]}"
    settings = replace(
        Settings.from_env(),
        mlflow_tracking_uri=server.url,
        model_name=name,
        experiment_name=name,
    )
    spec = Spec(k=K)
    manifests = read_manifests(trained.windows_dir)
    previous = mlflow.get_tracking_uri()
    try:
        first = Service(settings, trained.windows_dir, spec, Gate.of(spec), spark)
        handled = [first.handle(manifest) for manifest in manifests]
        restarted = Service(settings, trained.windows_dir, spec, Gate.of(spec), spark)
        again = [restarted.handle(manifest) for manifest in manifests]
    finally:
        mlflow.set_tracking_uri(previous)

    assert [(v.version, v.tags[WINDOW_TAG]) for v in handled] == [
        (str(m.window), str(m.window)) for m in manifests
    ]
    assert [v.version for v in again] == [v.version for v in handled]
    client = MlflowClient(server.url)
    assert len(client.search_model_versions(f"name = '{name}'")) == len(manifests)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert len(runs) == len(manifests)


def test_the_tracking_server_serves_the_ui_on_the_same_store(
    server: TrackingServer, trained: Trained
) -> None:
    """`make ui` has nothing to start for an http:// store: the server is the UI. Its page
    loads, and the UI's own API calls answer from PostgreSQL."""
    page = requests.get(server.url, timeout=30)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text
    model = requests.get(
        f"{server.url}/ajax-api/2.0/mlflow/registered-models/get", params={"name": NAME}, timeout=30
    )
    assert model.status_code == 200
    aliases = {a["alias"] for a in model.json()["registered_model"]["aliases"]}
    assert aliases == {"model1", "model2"}


def test_status_reports_the_running_server_and_its_database(server: TrackingServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infra.mlflow_server", "status", "--state-dir", server.state_dir],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pid = running_server(server.state_dir)  # not server.pid: the restart test starts another
    assert f"pid {pid} at {server.url}, answering" in done.stdout
    assert server.database_url in done.stdout


def test_the_server_answers_through_a_tracking_server_restart_and_follows_alias_moves(
    server: TrackingServer, trained: Trained, tmp_path: Path
) -> None:
    """`python -m serving` on the tracking server: it loads the aliases; while the tracking
    server and its database are down it keeps answering with the models it has; once they are
    back, an alias moved there reaches it by its poll."""
    env = {
        "MLFLOW_TRACKING_URI": server.url,
        "SERVING_ALIASES": "model1",
        "SERVING_POLL_INTERVAL": "1",
        "SERVING_LOG_FILE": str(tmp_path / "serving.log"),
    }
    port = int(server.url.rsplit(":", 1)[1])
    db_port = int(server.database_url.rsplit(":", 1)[1].split("/")[0])
    with serving_process(env, "--workers", "1") as (url, _):
        wait_for(f"{url}/ready", timeout=120)
        assert _served_version(url) == "1"

        stop_server(server.state_dir)
        deadline = time.monotonic() + 60
        while not _registry_error(url):  # until a poll has failed, and then some
            assert _served_version(url) == "1"
            assert time.monotonic() < deadline, "no poll failed while the tracking server was down"
            time.sleep(0.2)
        for _ in range(10):
            assert _served_version(url) == "1"
            time.sleep(0.2)

        back = start_server(server.state_dir, port, db_port, workers=1)
        assert back.url == server.url
        assert _served_version(url) == "1"
        client = MlflowClient(server.url)
        client.set_registered_model_alias(NAME, "model1", "2")
        try:
            deadline = time.monotonic() + 60
            while _served_version(url) != "2":
                assert time.monotonic() < deadline, "the alias move did not reach the server"
                time.sleep(0.5)
        finally:
            client.set_registered_model_alias(NAME, "model1", "1")


def _registry_error(url: str) -> str | None:
    """What `/ready` says went wrong resolving model1 (it stays 200 while a model is loaded)."""
    ready = requests.get(f"{url}/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    return ready.json()["models"]["model1"]["error"]


def _served_version(url: str) -> str:
    """The version that answers the seed's request on model1, which must be answered."""
    response = requests.post(f"{url}/predict_cluster_model1", json=EXAMPLE_RECORD, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["X-Model-Version"]


def test_a_port_in_use_is_refused_with_its_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cheap: nothing starts when the server's port is taken, and the error names the port."""
    state = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = mlflow_server.main(["up", "--state-dir", str(state), "--port", str(port)])
    assert code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
    assert not (state / "postgres").exists()
