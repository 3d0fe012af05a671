"""The service over a real stream: each window closed by the consumer becomes one run and one
registered version, the aliases follow the three newest accepted versions, a version the gate
rejects leaves the aliases where they were, and a restarted service measures the drift of its
first window against the window before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from pipelines.config import sqlite_tracking_uri
from pipelines.ingest.window_files import read_manifests
from pipelines.service.aliases import alias_targets
from pipelines.service.gate import Gate
from pipelines.service.loop import Service
from pipelines.training.drift import DRIFT_METRICS
from pipelines.training.tracking import DRIFT_AGAINST_TAG, DRIFT_CHART, SEGMENT_MAP
from tests.service.conftest import SPEC, WINDOWS, StreamRun, snapshot

pytestmark = [pytest.mark.kafka, pytest.mark.spark]


def test_each_window_is_one_run_and_one_version_and_the_aliases_follow(
    undisturbed: StreamRun,
) -> None:
    manifests = read_manifests(undisturbed.windows_dir)
    versions, aliases = snapshot(undisturbed.uri, undisturbed.settings.model_name)

    assert [m.window for m in manifests] == list(range(1, WINDOWS + 1))
    assert [(v[0], v[1], v[2]) for v in versions] == [
        (m.window, str(m.window), m.digest) for m in manifests
    ]
    assert versions[0][3] == "accepted"  # no model3 to drift from; the generated data is fit
    accepted = [number for number, _, _, verdict, _ in versions if verdict == "accepted"]
    assert aliases == {alias: v for alias, v in alias_targets(accepted).items() if v}
    client = MlflowClient(undisturbed.uri)
    for manifest in manifests:
        (run,) = client.search_runs(
            [client.get_experiment_by_name(undisturbed.settings.experiment_name).experiment_id],
            f"tags.window_digest = '{manifest.digest}'",
        )
        assert run.info.run_name == f"window-{manifest.window}"
        assert run.info.status == "FINISHED"
        assert run.data.tags["gate"] == versions[manifest.window - 1][3]
        assert run.data.params["windows"] == ",".join(map(str, range(1, manifest.window + 1)))


def test_a_rejected_version_stays_registered_and_the_aliases_do_not_move(
    undisturbed: StreamRun, spark: SparkSession, tmp_path: Path
) -> None:
    """Window 2 meets a silhouette floor of 0.99: registered and tagged rejected, no alias;
    window 3, under the usual gate, takes the next alias."""
    settings = replace(undisturbed.settings, mlflow_tracking_uri=sqlite_tracking_uri(tmp_path))
    manifests = read_manifests(undisturbed.windows_dir)
    strict = Gate.of(SPEC, min_silhouette=0.99)
    previous = mlflow.get_tracking_uri()
    try:
        usual = Service(settings, undisturbed.windows_dir, SPEC, Gate.of(SPEC), spark)
        usual.handle(manifests[0])
        rejected = Service(settings, undisturbed.windows_dir, SPEC, strict, spark).handle(
            manifests[1]
        )
        after_rejection = snapshot(settings.mlflow_tracking_uri, settings.model_name)
        usual.handle(manifests[2])
    finally:
        mlflow.set_tracking_uri(previous)

    assert rejected.tags["gate"] == "rejected"
    assert "silhouette" in rejected.tags["gate_reason"] and "< 0.99" in rejected.tags["gate_reason"]
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(rejected.run_id)
    assert (run.data.tags["gate"], run.data.tags["gate_reason"]) == (
        "rejected",
        rejected.tags["gate_reason"],
    )
    assert after_rejection[1] == {"model1": 1}
    versions, aliases = snapshot(settings.mlflow_tracking_uri, settings.model_name)
    assert [(v[0], v[3]) for v in versions] == [(1, "accepted"), (2, "rejected"), (3, "accepted")]
    assert (
        aliases
        == {alias: v for alias, v in alias_targets([1, 3]).items() if v}
        == {
            "model1": 1,
            "model2": 3,
        }
    )


def test_a_restarted_service_measures_its_first_window_against_the_window_before(
    undisturbed: StreamRun, spark: SparkSession, tmp_path: Path
) -> None:
    """A new Service (a restarted process: nothing in memory) trains window 2 after another
    trained window 1: its drift is measured against window 1's registered version, as the
    undisturbed run measured it from memory, not logged as having no window before."""
    settings = replace(undisturbed.settings, mlflow_tracking_uri=sqlite_tracking_uri(tmp_path))
    manifests = read_manifests(undisturbed.windows_dir)
    previous = mlflow.get_tracking_uri()
    try:
        Service(settings, undisturbed.windows_dir, SPEC, Gate.of(SPEC), spark).handle(manifests[0])
        restarted = Service(settings, undisturbed.windows_dir, SPEC, Gate.of(SPEC), spark)
        version = restarted.handle(manifests[1])
    finally:
        mlflow.set_tracking_uri(previous)

    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(version.run_id)
    reference = MlflowClient(undisturbed.uri)
    (expected,) = reference.search_runs(
        [reference.get_experiment_by_name(settings.experiment_name).experiment_id],
        f"tags.window_digest = '{manifests[1].digest}'",
    )
    assert run.data.tags[DRIFT_AGAINST_TAG] == expected.data.tags[DRIFT_AGAINST_TAG] == "window-1"
    assert {key: run.data.metrics[key] for key in DRIFT_METRICS} == pytest.approx(
        {key: expected.data.metrics[key] for key in DRIFT_METRICS}, rel=1e-9
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {SEGMENT_MAP, DRIFT_CHART} <= artifacts
