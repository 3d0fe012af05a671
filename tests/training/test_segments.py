"""Segments a person can read: profiles in original units and deterministic, unique names.

The naming rule is checked on hand-made profiles; the Spark part fits small models on generated
windows and checks the profile against the same numbers computed in pandas from the predictions,
then trains one window through MLflow and reads the segments back as the server does.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings, sqlite_tracking_uri
from pipelines.contract import CONTRACT, FEATURES
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import read_manifests, window_path, write_windows
from pipelines.train import train_windows
from pipelines.training.features import clean, customer_features
from pipelines.training.fitting import Spec, fit_customers
from pipelines.training.recipe import PREDICTION_COL, build_pipeline
from pipelines.training.registry import SEGMENTS_TAG
from pipelines.training.segments import (
    SEGMENT_COLUMNS,
    segment_name,
    segment_names,
    segment_profiles,
)
from pipelines.training.tracking import SEGMENT_NAMES_TAG, SEGMENTS_TABLE
from serving.registry import ModelRegistry

ROWS = 20_000


@pytest.mark.parametrize(
    ("customers", "frequency", "value", "basket", "name"),
    [
        (10, 1.0, 1.0, 1.0, "occasional"),
        (10, 1.49, 2.99, 3.99, "occasional"),
        (10, 1.5, 1.0, 1.0, "regular"),
        (10, 4.0, 1.0, 1.0, "loyal"),
        (10, 9.0, 8.0, 0.8, "loyal high-value"),
        (10, 2.0, 18.0, 2.2, "regular high-value"),
        (10, 1.0, 6.0, 2.4, "occasional high-value"),
        (10, 2.0, 19.0, 25.0, "wholesale"),
        (10, 9.0, 1.0, 4.0, "wholesale"),
        (0, np.nan, np.nan, np.nan, "empty"),
    ],
)
def test_segment_name_rule(
    customers: int, frequency: float, value: float, basket: float, name: str
) -> None:
    assert segment_name(customers, frequency, value, basket) == name


def _clusters(rows: list[tuple[int, float, float, float, float, float]]) -> pd.DataFrame:
    """(customers, frequency, value, basket, median amount, median invoices) per cluster."""
    columns = ["customers", "frequency_ratio", "value_ratio", "basket_ratio"]
    columns += ["median_TotalAmount", "median_NumInvoices"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.index.name = "cluster"
    return frame


def test_shared_names_are_numbered_by_spend_whatever_the_cluster_ids() -> None:
    clusters = _clusters(
        [
            (50, 1.0, 1.0, 1.0, 300.0, 1.0),  # occasional, spends most of the three
            (40, 1.0, 0.5, 1.0, 150.0, 1.0),  # occasional, spends least
            (30, 9.0, 8.0, 0.8, 4000.0, 18.0),  # loyal high-value, alone
            (20, 1.2, 0.9, 1.0, 250.0, 2.0),  # occasional, in between
            (10, 1.1, 0.9, 1.0, 250.0, 1.0),  # same spend, fewer invoices: before cluster 3
        ]
    )
    names = segment_names(clusters)
    assert list(names) == [
        "occasional 4",
        "occasional 1",
        "loyal high-value",
        "occasional 3",
        "occasional 2",
    ]
    # Relabelled clusters (KMeans ids are arbitrary) keep their names.
    shuffled = clusters.iloc[[3, 0, 4, 2, 1]].reset_index(drop=True)
    shuffled.index.name = "cluster"
    assert list(segment_names(shuffled)) == [names[i] for i in (3, 0, 4, 2, 1)]


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("segments") / "windows"
    write_windows(generate_dataset(ROWS, seed=7)[0], root)
    return root


@pytest.fixture(scope="module")
def features(spark: SparkSession, windows: Path) -> DataFrame:
    paths = [str(window_path(windows, i)) for i in (1, 2, 3)]
    return customer_features(clean(spark.read.parquet(*paths)).rows).cache()


@pytest.mark.spark
def test_features_are_typed_as_the_contract_says(features: DataFrame) -> None:
    types = {field.name: field.dataType.typeName() for field in features.schema.fields}
    assert {f.name: types[f.name] for f in CONTRACT} == {f.name: f.spark_type for f in CONTRACT}


@pytest.mark.spark
@pytest.mark.parametrize("k", [4, 6])
def test_profile_matches_the_predictions(features: DataFrame, k: int) -> None:
    model = build_pipeline(k, seed=42).fit(features)
    profile = segment_profiles(model, features)

    assert list(profile.columns) == list(SEGMENT_COLUMNS)
    assert list(profile["cluster"]) == list(range(k))
    assert profile["name"].is_unique
    assert profile["share"].sum() == pytest.approx(1.0)
    assert profile["revenue_share"].sum() == pytest.approx(1.0)

    scored = model.transform(features).select(*FEATURES, PREDICTION_COL).toPandas()
    by_cluster = scored.groupby(PREDICTION_COL)
    expected_revenue = by_cluster["TotalAmount"].sum() / scored["TotalAmount"].sum()
    for row in profile.itertuples():
        assert row.customers == (scored[PREDICTION_COL] == row.cluster).sum()
        assert row.revenue_share == pytest.approx(expected_revenue[row.cluster], rel=1e-9)
        members = scored[scored[PREDICTION_COL] == row.cluster]
        for f in FEATURES:
            assert getattr(row, f"median_{f}") == pytest.approx(members[f].median(), rel=1e-9)
        value = members["TotalAmount"].median() / scored["TotalAmount"].median()
        assert row.value_ratio == pytest.approx(value, rel=1e-9)

    # Deterministic: the same data and seed give the same model and so the same names.
    again = segment_profiles(build_pipeline(k, seed=42).fit(features), features)
    assert list(again["name"]) == list(profile["name"])


@pytest.mark.spark
def test_generated_segments_get_their_names(features: DataFrame) -> None:
    """The model the recipe chooses on all three windows: the clusters made mostly of the
    generator's wholesale and loyal customers are named so, whatever their cluster ids; the rest
    are occasional or regular."""
    model = fit_customers(features, Spec(), "three windows").selection.chosen.model
    profile = segment_profiles(model, features).set_index("cluster")
    truth = generate_dataset(ROWS, seed=7)[1].set_index("CustomerID")["Segment"]
    found = model.transform(features).select("CustomerID", PREDICTION_COL).toPandas()
    majority = (
        found.assign(segment=truth.loc[found["CustomerID"]].to_numpy())
        .groupby(PREDICTION_COL)["segment"]
        .agg(lambda segments: segments.mode()[0])
    )
    names = profile.loc[majority.index, "name"]
    assert set(names[majority == "wholesale"]) == {"wholesale"}
    assert all(name.startswith("loyal") for name in names[majority == "loyal"])
    others = names[~majority.isin(["wholesale", "loyal"])]
    assert all(name.split()[0] in {"occasional", "regular"} for name in others)
    assert {"wholesale", "loyal"} <= set(majority)


@pytest.mark.spark
@pytest.mark.slow
def test_trained_version_carries_its_segments_to_the_server(
    spark: SparkSession, windows: Path, tmp_path: Path
) -> None:
    uri = sqlite_tracking_uri(tmp_path / "store")
    settings = replace(Settings.from_env(), mlflow_tracking_uri=uri)
    previous_uri = mlflow.get_tracking_uri()
    try:
        (trained,) = train_windows(windows, windows=1, k=4, settings=settings, spark=spark)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    client = MlflowClient(uri)
    run = client.get_run(trained.run_id)

    # The window the model saw, as a dataset input: name, digest, Kafka source, context.
    manifest = next(m for m in read_manifests(windows) if m.window == 1)
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == (
        "window-1",
        manifest.digest,
        "kafka",
    )
    source = json.loads(dataset.source)
    assert source["topic"] == Settings.kafka_topic
    assert source["offsets"] == {str(p): r for p, r in manifest.offsets.items()}
    assert json.loads(dataset.profile)["num_rows"] == manifest.rows
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    # The run's segments: a table and a CSV, the same as the registered version's tag.
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{SEGMENTS_TABLE}")
    table = pd.DataFrame(table["data"], columns=table["columns"])
    artifacts = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"segments.csv", SEGMENTS_TABLE} <= artifacts
    version = client.get_model_version(settings.model_name, str(trained.version))
    records = json.loads(version.tags[SEGMENTS_TAG])
    assert [r["name"] for r in records] == list(table["name"])
    assert [r["id"] for r in records] == list(range(4))
    for record in records:
        assert f"{record['id']} {record['name']} (" in version.description
    names = "; ".join(f"{r['id']} {r['name']}" for r in records)
    assert version.tags[SEGMENT_NAMES_TAG] == run.data.tags[SEGMENT_NAMES_TAG] == names

    # What GET /models shows for the alias.
    registry = ModelRegistry(uri, settings.model_name, ("model1",))
    registry.refresh()
    described = registry.slot("model1").model.describe()
    assert described["segments"] == records
    assert sum(s["customers"] for s in described["segments"]) == int(run.data.params["customers"])
    assert set(records[0]) == {"id", "name", "customers", "share", "revenue_share", "median"}
    assert set(records[0]["median"]) == set(FEATURES)
