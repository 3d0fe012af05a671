"""What the experiment and each window say about themselves in MLflow, without Spark: the
experiment's kind tag, and a window as a dataset input (name, digest, Kafka source)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from mlflow import MlflowClient

from pipelines.config import Settings, sqlite_tracking_uri
from pipelines.ingest.window_files import Manifest
from pipelines.training.datasets import WindowDataset
from pipelines.training.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    experiment_id,
    experiment_page,
)


def test_experiment_is_marked_as_model_development(tmp_path: Path) -> None:
    uri = sqlite_tracking_uri(tmp_path)
    client = MlflowClient(uri)
    settings = replace(Settings.from_env(), mlflow_tracking_uri=uri)

    created = experiment_id(client, settings)
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT

    older = client.create_experiment("made-before-the-mark")
    marked = experiment_id(client, replace(settings, experiment_name="made-before-the-mark"))
    assert marked == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT

    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    experiment_id(client, replace(settings, experiment_name="chosen"))
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_experiment_page_sets_the_model_training_view() -> None:
    assert (
        experiment_page("http://127.0.0.1:5001/", "7")
        == "http://127.0.0.1:5001/#/experiments/7?workflowType=machine_learning"
    )


def test_window_dataset_is_the_manifest() -> None:
    manifest = Manifest(
        window=2,
        topic="retail-transactions",
        offsets={0: [10, 20], 1: [5, 15]},
        rows=20,
        digest="00ff00ff00ff00ff",
        first_invoice_date="2011-01-01 08:00:00",
        last_invoice_date="2011-02-01 18:00:00",
    )
    entity = WindowDataset(manifest)._to_mlflow_entity()
    assert (entity.name, entity.digest, entity.source_type) == (
        "window-2",
        "00ff00ff00ff00ff",
        "kafka",
    )
    source = json.loads(entity.source)
    assert source["uri"] == "kafka://retail-transactions?offsets=0:10-20,1:5-15"
    assert source["offsets"] == {"0": [10, 20], "1": [5, 15]}
    profile = json.loads(entity.profile)
    assert profile["num_rows"] == 20 and profile["source"] == source["uri"]
    columns = json.loads(entity.schema)["mlflow_colspec"]
    assert [c["name"] for c in columns][:3] == ["InvoiceNo", "StockCode", "Description"]
