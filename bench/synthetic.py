"""A registered model for `bench.serve --synthetic`, made without a stream or a training run.

`fit` fits the project's recipe on the customers of a generated dataset (cut into one window file
by `write_windows`, read back like training reads it); `register` logs a fitted model in a run the
way training logs it (the `k` and `window` params, the `silhouette` metric and the `window` tag
that `GET /models` reports) and registers it as a new version of the model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.config import sqlite_tracking_uri as tracking_uri
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import window_path, write_windows
from pipelines.training.features import clean, customer_features
from pipelines.training.recipe import PREDICTION_COL, build_pipeline
from pipelines.training.session import spark_session

__all__ = ["MODEL_NAME", "fit", "local_spark", "register", "tracking_uri"]

MODEL_NAME = Settings.model_name
ROWS = 20_000

# Without explicit requirements, each log_model infers them in a subprocess (~17 s).
PIP_REQUIREMENTS = ["pyspark>=4.0,<5", "mlflow>=3.17,<4"]


def local_spark() -> SparkSession:
    """The training job's session on two cores."""
    return spark_session("local[2]")


def customers(spark: SparkSession, seed: int, rows: int = ROWS) -> DataFrame:
    """The per-customer features of a generated dataset, as training computes them."""
    folder = Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    frame, _ = generate_dataset(rows, seed)
    write_windows(frame, folder, windows=1)
    return customer_features(clean(spark.read.parquet(str(window_path(folder, 1)))).rows).cache()


def fit(spark: SparkSession, k: int, seed: int) -> PipelineModel:
    return build_pipeline(k, seed=seed).fit(customers(spark, seed))


def register(
    spark: SparkSession,
    model: PipelineModel,
    *,
    model_name: str,
    alias: str,
    window: int,
    k: int,
    seed: int = 0,
) -> str:
    """Log `model` in a run like training does, register it as a new version, point `alias` at it.

    Returns the new version number. The tracking URI must already be set.
    """
    frame = model.transform(customers(spark, seed))
    silhouette = ClusteringEvaluator(featuresCol="features", predictionCol=PREDICTION_COL).evaluate(
        frame
    )
    with mlflow.start_run(run_name=f"window-{window}", experiment_id=_experiment_id(model_name)):
        mlflow.log_params({"k": k, "window": window})
        mlflow.log_metric("silhouette", silhouette)
        mlflow.set_tag("window", str(window))
        info = mlflow.spark.log_model(
            model, "model", registered_model_name=model_name, pip_requirements=PIP_REQUIREMENTS
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(model_name, alias, version)
    return version


def _experiment_id(name: str) -> str:
    """The experiment's id, creating it with artifacts beside a sqlite store's database.

    (MLflow's default would be ./mlruns of whatever the working directory is.) Not
    mlflow.set_experiment: that exports MLFLOW_EXPERIMENT_ID to os.environ.
    """
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(mlflow.get_tracking_uri().removeprefix("sqlite:///")).parent / "mlruns"
    return mlflow.create_experiment(name, artifact_location=location.as_uri())
