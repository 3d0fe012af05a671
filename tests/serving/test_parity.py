"""The JVM-free predictor agrees with Spark's own `transform` on every input, edge cases included.

For each version the training job registered (tests/serving/conftest.py): >= 100,000 rows
(random, heavy-tailed, zeros, huge magnitudes, near ties between centers, exactly-on-center
points) go through one Spark `transform` and through `serving.predictor`, both the vectorised
batch path and the single-row path.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from pipelines.data.schema import FEATURES
from pipelines.training.recipe import build_pipeline
from serving.predictor import SegmentationModel, UnsupportedModelError, load_pipeline
from tests.serving_fixtures import MODEL_NAME, features_frame, fit, synthetic_features, tracking

pytestmark = pytest.mark.spark

N_RANDOM = 100_000


def edge_rows(model: SegmentationModel, rng: np.random.Generator) -> np.ndarray:
    """Rows where float rounding decides: ties between centers, huge, tiny and zero values."""
    scaler, centers = model.scaler, model.kmeans.centers
    rows = []
    # Points on and around the midpoint of every pair of centers, in input units.
    for i in range(len(centers)):
        for j in range(i + 1, len(centers)):
            for t in np.concatenate([[0.5], 0.5 + np.ldexp(rng.integers(-64, 64, 200), -52)]):
                rows.append(scaler.to_original(centers[i] + t * (centers[j] - centers[i])))
    rows.extend(scaler.to_original(centers))  # exactly on the centers (up to rounding)
    rows.append(scaler.mean)  # scales to the origin
    magnitudes = [0.0, 5e-324, 1e-300, 1e-9, 1.0, 1e6, 1e15, 1e154, 1e300, 1.7976931348623157e308]
    for q in magnitudes:
        for a in magnitudes:
            for n in (0.0, 1.0, 1e15, 1e300):
                for sq, sa in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
                    rows.append([sq * q, sa * a, n])
    return np.array(rows, dtype=np.float64)


def random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Typical and heavy-tailed customers, plus small integers that collide often."""
    third = n // 3
    lognormal = np.column_stack(
        [
            rng.lognormal(4, 2, third) * rng.choice([-1, 1], third, p=[0.05, 0.95]),
            rng.lognormal(6, 2.5, third),
            rng.geometric(0.2, third),
        ]
    )
    pareto = np.column_stack(
        [rng.pareto(1.1, third) * 100, rng.pareto(0.9, third) * 1000, rng.pareto(1.5, third)]
    )
    rest = n - 2 * third
    small = np.column_stack(
        [rng.integers(-5, 50, rest), rng.integers(0, 500, rest), rng.integers(0, 10, rest)]
    )
    return np.vstack([lognormal, pareto, small]).astype(np.float64)


def spark_predictions(
    spark: SparkSession, model_path: Path, rows: np.ndarray, scratch: Path
) -> np.ndarray:
    """Spark's `transform` of the saved pipeline on `rows` (one job, read from Parquet)."""
    from pyspark.ml import PipelineModel

    table = pa.table({"id": np.arange(len(rows))} | {c: rows[:, i] for i, c in enumerate(FEATURES)})
    pq.write_table(table, scratch / "rows.parquet")
    frame = spark.read.parquet(str(scratch / "rows.parquet"))
    model = PipelineModel.load(str(model_path))
    prediction_col = model.stages[-1].getPredictionCol()
    out = model.transform(frame).select("id", prediction_col).toArrow()
    order = np.argsort(out.column("id").to_numpy())
    return out.column(prediction_col).to_numpy()[order]


@pytest.mark.parametrize("alias", ["model1", "model2", "model3"])
def test_predictions_equal_spark_transform(
    spark: SparkSession, store: str, alias: str, tmp_path: Path
) -> None:
    with tracking(store):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@{alias}"))
    model = load_pipeline(local / "sparkml")
    rng = np.random.default_rng(int(alias[-1]))
    rows = np.vstack([edge_rows(model, rng), random_rows(rng, N_RANDOM)])
    assert len(rows) >= 100_000

    expected = spark_predictions(spark, local / "sparkml", rows, tmp_path)
    batch = model.predict(rows)
    single = np.array([model.predict_one(row) for row in rows.tolist()])

    assert np.array_equal(batch, expected), f"{np.sum(batch != expected)} batch mismatches"
    assert np.array_equal(single, expected), f"{np.sum(single != expected)} single mismatches"
    assert set(expected.tolist()) == set(range(model.k)), "inputs should reach every cluster"


def test_unsupported_stage_fails_at_load_naming_it(spark: SparkSession, tmp_path: Path) -> None:
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import Normalizer

    fitted = fit(spark, 3, seed=7, n=300)
    normalizer = Normalizer(inputCol="features", outputCol="normed")
    extended = PipelineModel([*fitted.stages[:2], normalizer, fitted.stages[2]])
    extended.save(str(tmp_path / "extended"))
    with pytest.raises(UnsupportedModelError, match=normalizer.uid):
        load_pipeline(tmp_path / "extended")

    cosine = fit(spark, 3, seed=7, n=300, distance_measure="cosine")
    cosine.save(str(tmp_path / "cosine"))
    with pytest.raises(UnsupportedModelError, match=f"{cosine.stages[2].uid}.*cosine"):
        load_pipeline(tmp_path / "cosine")


def test_centering_without_scaling_matches_spark(spark: SparkSession, tmp_path: Path) -> None:
    """StandardScaler(withMean=true, withStd=false): the other setting the reader accepts."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StandardScaler

    stages = build_pipeline(4, seed=3).getStages()
    stages[1] = StandardScaler(
        inputCol="raw_features", outputCol="features", withMean=True, withStd=False
    )
    fitted = Pipeline(stages=stages).fit(features_frame(spark, synthetic_features(500, seed=3)))
    fitted.save(str(tmp_path / "centered"))
    model = load_pipeline(tmp_path / "centered")
    rng = np.random.default_rng(3)
    rows = np.vstack([edge_rows(model, rng), random_rows(rng, 20_000)])
    expected = spark_predictions(spark, tmp_path / "centered", rows, tmp_path)
    assert np.array_equal(model.predict(rows), expected)
    assert np.array_equal([model.predict_one(r) for r in rows.tolist()], expected)
