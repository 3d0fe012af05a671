"""Registered versions read back from the store: what a restarted service compares with.

A running service hands each window's fit on to the next one in memory (`PreviousWindow`, for
the drift metrics). After a restart that is gone, yet the first window it trains must still be
measured against the window before, not logged as having none. The store holds all of it: the
previous window's version (its model, silhouette, cluster sizes and segment names), the windows
that model was trained on (its run's `windows` param, read again from the window files for its
customers) and every earlier window's silhouette and drift metrics for the drift chart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from pipelines.ingest.window_files import Manifest, read_manifests, window_path
from pipelines.service import ledger
from pipelines.training.drift import CLUSTER, DRIFT_METRICS, HistoryPoint, Snapshot
from pipelines.training.features import clean, customer_features
from pipelines.training.fitting import PreviousWindow
from pipelines.training.registry import SEGMENTS_TAG
from pipelines.training.report import ModelProfile
from pipelines.training.scoring import place
from pipelines.training.tracking import CLUSTER_SIZE_METRIC

log = logging.getLogger(__name__)


def load_profile(client: MlflowClient, version: ModelVersion) -> tuple[PipelineModel, ModelProfile]:
    """A registered version's model and profile, from the model and its run's metrics (a loaded
    model has no training summary to count its clusters)."""
    model = mlflow.spark.load_model(f"models:/{version.name}/{version.version}")
    metrics = client.get_run(version.run_id).data.metrics
    sizes = [int(metrics[f"{CLUSTER_SIZE_METRIC}{i}"]) for i in range(int(version.tags["k"]))]
    window = int(version.tags[ledger.WINDOW_TAG])
    return model, ModelProfile.of(window, model, metrics["silhouette"], sizes)


def previous_window(
    spark: SparkSession, client: MlflowClient, name: str, windows_dir: Path, window: int
) -> PreviousWindow | None:
    """Window `window - 1` of `windows_dir` as its registered version left it; None when it has
    none (`window` is the first)."""
    manifests = [m for m in read_manifests(windows_dir) if m.window < window]
    versions = {m.window: ledger.registered_version(client, name, m) for m in manifests}
    version = versions.get(window - 1)
    if version is None:
        return None
    model, profile = load_profile(client, version)
    trained_on = client.get_run(version.run_id).data.params["windows"].split(",")
    cleaned = clean(
        spark.read.parquet(*[str(window_path(windows_dir, int(i))) for i in trained_on])
    )
    customers = place(customer_features(cleaned.rows), model, CLUSTER)
    segments = sorted(json.loads(version.tags[SEGMENTS_TAG]), key=lambda s: s["id"])
    history = tuple(
        _history_point(client, manifest, versions[manifest.window])
        for manifest in manifests
        if versions[manifest.window] is not None
    )
    log.info("window %d: drift against window %d, version %s", window, window - 1, version.version)
    return PreviousWindow(
        Snapshot(profile, customers, [s["name"] for s in segments]), model, history
    )


def _history_point(client: MlflowClient, manifest: Manifest, version: ModelVersion) -> HistoryPoint:
    metrics = client.get_run(version.run_id).data.metrics
    drift = {key: metrics[key] for key in DRIFT_METRICS if key in metrics}
    return HistoryPoint(manifest.window, metrics["silhouette"], drift)
