"""The JVM-free predictor agrees with Spark's own `transform` on every input, edge cases included.

For each version the training job registered (tests/serving/conftest.py; the recipe's signed
log1p -> assembler -> scaler -> KMeans):
>= 100,000 rows (random, heavy-tailed, the real file's ranges and beyond, zeros, negatives, huge
magnitudes, the branch points of fdlibm's log1p, near ties between centers, exactly-on-center
points) go through one Spark `transform` and through `serving.predictor`, both the vectorised
batch path and the single-row path. The transform itself is also compared bit for bit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from pipelines.data.schema import FEATURES
from pipelines.training import feature_transform
from pipelines.training.recipe import build_pipeline
from serving.predictor import SegmentationModel, UnsupportedModelError, load_pipeline
from serving.strict_log1p import signed_log1p, signed_log1p_array
from tests.serving_fixtures import (
    MODEL_NAME,
    features_frame,
    fit,
    synthetic_features,
    tracking,
)

pytestmark = pytest.mark.spark

N_RANDOM = 100_000


def _high_word(word: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", word << 32))[0]


def log1p_edge_values() -> np.ndarray:
    """Magnitudes where fdlibm's log1p changes branch or rounds hardest, and the table's ends."""
    values = [0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e-9, 0.01, 0.3, 0.5, 1.0]
    # the tiny, small (k = 0) and reduced branches meet here; the reduced one ends at 2**53
    for edge in (2.0**-54, 2.0**-29, _high_word(0x3FDA827A), 2.0**53, 1e15, 32_767.0, 32_768.0):
        values += [np.nextafter(edge, 0.0), edge, np.nextafter(edge, np.inf)]
    # 1 + x close to a power of two (fdlibm's hu == 0 branch), on both sides
    for exponent in range(1, 64):
        power = 2.0**exponent
        for offset in (0.0, 2.0**-21, -(2.0**-21), 2.0**-19, 0.5, -0.5):
            values += [power - 1.0 + offset * power, power + offset * power]
    values += [2.0**exponent for exponent in range(-1074, 1024, 7)]
    values += [1e154, 1.34e154, 1e300, 1.7976931348623157e308]
    positive = np.abs(np.array(values, dtype=np.float64))
    return np.concatenate([positive, -positive])


def edge_rows(model: SegmentationModel, rng: np.random.Generator) -> np.ndarray:
    """Rows where float rounding decides: ties between centers, huge, tiny and zero values, and
    the branch points of the transform."""
    centers = model.kmeans.centers
    rows = []
    # Points on and around the midpoint of every pair of centers, in input units.
    for i in range(len(centers)):
        for j in range(i + 1, len(centers)):
            for t in np.concatenate([[0.5], 0.5 + np.ldexp(rng.integers(-64, 64, 200), -52)]):
                rows.append(model.to_original(centers[i] + t * (centers[j] - centers[i])))
    rows.extend(model.to_original(centers))  # exactly on the centers (up to rounding)
    rows.append(model.to_original(np.zeros(centers.shape[1])))  # scales to the origin
    magnitudes = [0.0, 5e-324, 1e-300, 1e-9, 1.0, 1e6, 1e15, 1e154, 1e300, 1.7976931348623157e308]
    for q in magnitudes:
        for a in magnitudes:
            for n in (0.0, 1.0, 1e15, 1e300):
                for sq, sa in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
                    rows.append([sq * q, sa * a, n])
    edges = log1p_edge_values()
    for column in range(3):  # each edge value in each column, the others typical
        block = np.tile([379.0, 650.35, 3.0], (len(edges), 1))
        block[:, column] = edges
        rows.extend(block)
    return np.array(rows, dtype=np.float64)


def random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Typical and heavy-tailed customers, the real file's ranges and beyond, small integers."""
    quarter = n // 4
    lognormal = np.column_stack(
        [
            rng.lognormal(4, 2, quarter) * rng.choice([-1, 1], quarter, p=[0.05, 0.95]),
            rng.lognormal(6, 2.5, quarter),
            rng.geometric(0.2, quarter),
        ]
    )
    pareto = np.column_stack(
        [rng.pareto(1.1, quarter) * 100, rng.pareto(0.9, quarter) * 1000, rng.pareto(1.5, quarter)]
    )
    # The UCI file's ranges (TotalQuantity up to ~2e5, TotalAmount ~3e5 in pence, NumInvoices up
    # to ~200) and ten times beyond, some negative (returns).
    sign = rng.choice([-1.0, 1.0], (quarter, 2), p=[0.03, 0.97])
    real = np.column_stack(
        [
            sign[:, 0] * rng.integers(0, 2_000_000, quarter),
            sign[:, 1] * np.round(rng.uniform(0, 3_000_000, quarter), 2),
            rng.integers(0, 2_000, quarter),
        ]
    )
    rest = n - 3 * quarter
    small = np.column_stack(
        [rng.integers(-5, 50, rest), rng.integers(0, 500, rest), rng.integers(0, 10, rest)]
    )
    return np.vstack([lognormal, pareto, real, small]).astype(np.float64)


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


def test_signed_log1p_equals_spark_bit_for_bit(spark: SparkSession, tmp_path: Path) -> None:
    """The recipe's SQLTransformer and `serving.predictor`'s port agree on every bit (NaN aside,
    which requests cannot send), where glibc's log1p would not."""
    from pyspark.ml.feature import SQLTransformer

    rng = np.random.default_rng(11)
    values = np.concatenate(
        [
            log1p_edge_values(),
            random_rows(rng, 60_000).ravel(),
            rng.integers(0, 0x7FF0000000000000, 20_000, dtype=np.int64).view(np.float64),
            np.arange(-40_000.0, 40_000.0),
            [np.inf, -np.inf, np.nan],
        ]
    )
    assert len(values) >= 100_000
    columns = {c: values for c in FEATURES}
    pq.write_table(pa.table({"id": np.arange(len(values))} | columns), tmp_path / "v.parquet")
    stage = SQLTransformer(statement=feature_transform.statement(FEATURES))
    outputs = [feature_transform.output_column(c) for c in FEATURES]
    out = stage.transform(spark.read.parquet(str(tmp_path / "v.parquet")))
    table = out.select("id", *outputs).toArrow()
    order = np.argsort(table.column("id").to_numpy())

    batch = signed_log1p_array(values)
    single = np.array([signed_log1p(v) for v in values.tolist()])
    with np.errstate(invalid="ignore"):
        libm = np.sign(values) * np.log1p(np.abs(values))
    for output in outputs:
        expected = table.column(output).to_numpy(zero_copy_only=False)[order]
        for ours in (batch, single):
            same = (ours.view(np.int64) == expected.view(np.int64)) | np.isnan(expected)
            assert same.all(), f"{np.sum(~same)} differ, e.g. x={values[~same][:3]}"
            assert np.array_equal(np.isnan(ours), np.isnan(expected))
        # The test can tell: the C library's log1p is off in the last bit somewhere here.
        assert np.sum((libm != expected) & ~np.isnan(expected)) > 0


def test_unsupported_stage_fails_at_load_naming_it(spark: SparkSession, tmp_path: Path) -> None:
    from pyspark.ml import PipelineModel
    from pyspark.ml.feature import Normalizer, SQLTransformer

    fitted = fit(spark, 3, seed=7, n=300)
    transform, assembler, scaler, kmeans = fitted.stages
    normalizer = Normalizer(inputCol="features", outputCol="normed")
    extended = PipelineModel([transform, assembler, scaler, normalizer, kmeans])
    extended.save(str(tmp_path / "extended"))
    with pytest.raises(UnsupportedModelError, match=normalizer.uid):
        load_pipeline(tmp_path / "extended")

    cosine = fit(spark, 3, seed=7, n=300, distance_measure="cosine")
    cosine.save(str(tmp_path / "cosine"))
    with pytest.raises(UnsupportedModelError, match=f"{cosine.stages[3].uid}.*cosine"):
        load_pipeline(tmp_path / "cosine")

    # Any statement but the recipe's, even one that only differs in arithmetic, is refused.
    other = SQLTransformer(statement=transform.getStatement().replace("log1p(abs(", "log(1 + abs("))
    PipelineModel([other, assembler, scaler, kmeans]).save(str(tmp_path / "other-statement"))
    with pytest.raises(UnsupportedModelError, match=f"{other.uid}.*SQLTransformer.*statement"):
        load_pipeline(tmp_path / "other-statement")

    # The recipe's own statement, but over columns the assembler does not read.
    fewer = SQLTransformer(statement=feature_transform.statement(FEATURES[:2]))
    PipelineModel([fewer, assembler, scaler, kmeans]).save(str(tmp_path / "fewer"))
    with pytest.raises(UnsupportedModelError, match=fewer.uid):
        load_pipeline(tmp_path / "fewer")

    # The transform anywhere but first is not the recipe either.
    moved = PipelineModel([assembler, transform, scaler, kmeans])
    moved.save(str(tmp_path / "moved"))
    with pytest.raises(UnsupportedModelError, match=transform.uid):
        load_pipeline(tmp_path / "moved")


@pytest.mark.parametrize("transform", feature_transform.TRANSFORMS)
def test_centering_without_scaling_matches_spark(
    spark: SparkSession, tmp_path: Path, transform: str
) -> None:
    """StandardScaler(withMean=true, withStd=false): the other setting the reader accepts; and
    `transform="none"`, the recipe without its first stage, as models before it were saved."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StandardScaler

    stages = build_pipeline(4, seed=3, transform=transform).getStages()
    stages[-2] = StandardScaler(
        inputCol="raw_features", outputCol="features", withMean=True, withStd=False
    )
    fitted = Pipeline(stages=stages).fit(features_frame(spark, synthetic_features(500, seed=3)))
    fitted.save(str(tmp_path / "centered"))
    model = load_pipeline(tmp_path / "centered")
    assert model.transform == transform and model.input_cols == FEATURES
    rng = np.random.default_rng(3)
    rows = np.vstack([edge_rows(model, rng), random_rows(rng, 20_000)])
    expected = spark_predictions(spark, tmp_path / "centered", rows, tmp_path)
    assert np.array_equal(model.predict(rows), expected)
    assert np.array_equal([model.predict_one(r) for r in rows.tolist()], expected)
