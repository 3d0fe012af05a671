"""A live run: the service consumes while the stream arrives, and a real server follows it.

The generated stream arrives in WINDOWS replays, each one window (the rows rule with windows
larger than a replay: the replay's end marker closes it), the next sent only once the server
answers for the one before. Each window gives one version; after each, the aliases are the
three newest accepted versions (unset before there are three) and the server answers the seed's
request from exactly those versions, model3 the newest, on fresh connections that reach either
of its two workers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.config import Settings, sqlite_tracking_uri
from pipelines.contract import EXAMPLE_RECORD
from pipelines.data.generator import write_csv
from pipelines.data.load import load_transactions
from pipelines.ingest.messages import invoice_starts
from pipelines.ingest.producer import replay
from pipelines.ingest.window_rule import WindowRule
from pipelines.service.aliases import ALIASES, alias_targets
from pipelines.service.gate import Gate
from pipelines.service.loop import Service
from pipelines.service.timeline import METRIC_PREFIX, STEPS
from tests.service.conftest import ROWS, SPEC, snapshot
from tests.serving_fixtures import serving_process

pytestmark = [pytest.mark.kafka, pytest.mark.spark]

WINDOWS = 4  # one more than there are aliases: the fourth moves model1 off the first version
TIMEOUT = 900.0  # seconds a window may take to be trained and served on a busy machine
SAME_ANSWERS = 8  # answers in a row, each on a new connection, that must agree


def _parts(dataset: Path, folder: Path) -> list[Path]:
    """The dataset cut into WINDOWS files of whole invoices, in order."""
    frame = load_transactions(dataset).frame
    starts = invoice_starts(frame)
    bounds = [*(starts[len(starts) * i // WINDOWS] for i in range(WINDOWS)), len(frame)]
    return [
        write_csv(frame.iloc[begin:end], folder / f"part-{i}.csv")
        for i, (begin, end) in enumerate(zip(bounds, bounds[1:], strict=False), start=1)
    ]


def _until(what: str, check: Callable[[], object], failed: list[BaseException]) -> object:
    """`check()` once it is truthy; fails after TIMEOUT, or at once if the service failed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        if failed:
            raise AssertionError(f"the service failed while waiting for {what}") from failed[0]
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {TIMEOUT:.0f} s")
        time.sleep(0.5)


def _served(url: str) -> dict[str, int]:
    """The version each alias answers the seed's request from, on a new connection (503: unset)."""
    versions = {}
    for alias in ALIASES:
        response = requests.post(f"{url}/predict_cluster_{alias}", json=EXAMPLE_RECORD, timeout=10)
        if response.status_code == 503:
            continue
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"cluster"}
        versions[alias] = int(response.headers["X-Model-Version"])
    return versions


@pytest.fixture
def running_service(
    kafka_bootstrap: str, spark: SparkSession, tmp_path: Path
) -> Iterator[tuple[Settings, list[BaseException]]]:
    """The service on a topic and store of its own, in a thread until the test ends."""
    topic = f"live-{uuid.uuid4().hex[:12]}"
    settings = replace(
        Settings.from_env(),
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic=topic,
        kafka_group=f"{topic}-windows",
        mlflow_tracking_uri=sqlite_tracking_uri(tmp_path / "store"),
    )
    previous = mlflow.get_tracking_uri()
    service = Service(settings, tmp_path / "windows", SPEC, Gate.of(SPEC), spark)
    stop, failed = threading.Event(), []

    def run() -> None:
        try:  # windows larger than a replay: each replay's end marker closes its one window
            service.run(WindowRule(rows=ROWS), until_window=WINDOWS, stop=stop)
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=run, name="stream-service")
    thread.start()
    try:
        yield settings, failed
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT)
        mlflow.set_tracking_uri(previous)
    assert not thread.is_alive(), "the service did not stop"


def test_each_window_is_served_from_the_new_model3_as_the_stream_flows(
    running_service: tuple[Settings, list[BaseException]], stream_dataset: Path, tmp_path: Path
) -> None:
    settings, failed = running_service
    uri, name = settings.mlflow_tracking_uri, settings.model_name
    env = {"MLFLOW_TRACKING_URI": uri, "SERVING_LOG_FILE": str(tmp_path / "serving.log")}
    served_model3 = []
    with serving_process(env, "--workers", "2", "--poll-interval", "0.5") as (url, _):
        for window, part in enumerate(_parts(stream_dataset, tmp_path), start=1):
            replay(part, settings, progress=False)
            versions, aliases = _until(
                f"version {window} and its aliases",
                lambda w=window: _registered(uri, name, w),
                failed,
            )
            assert [(number, tag) for number, tag, *_ in versions] == [
                (i, str(i)) for i in range(1, window + 1)
            ]  # window i is version i, exactly once
            _until(
                f"the server answering from {aliases}",
                lambda a=aliases: all(_served(url) == a for _ in range(SAME_ANSWERS)),
                failed,
            )
            served_model3.append(aliases.get("model3"))

    moves = [version for version in served_model3 if version is not None]
    assert len(set(moves)) >= 2, f"model3 never moved while served: {served_model3}, {versions}"
    client = MlflowClient(uri)
    for version in client.search_model_versions(f"name = '{name}'"):
        metrics = client.get_run(version.run_id).data.metrics
        steps = {step: metrics[f"{METRIC_PREFIX}{step}"] for step in STEPS}
        assert all(seconds >= 0 for seconds in steps.values()), steps  # how fresh it was served


def _registered(uri: str, name: str, window: int) -> tuple[list, dict[str, int]] | None:
    """The registry once window `window` is its newest version and the aliases follow the rule
    (the three newest accepted versions); None before."""
    versions, aliases = snapshot(uri, name)
    accepted = [number for number, _, _, verdict, _ in versions if verdict == "accepted"]
    targets = {alias: v for alias, v in alias_targets(accepted).items() if v is not None}
    return (versions, aliases) if len(versions) == window and aliases == targets else None
