"""The segmentation model: one Spark ML Pipeline, saved, registered and served as a whole.

    SQLTransformer (sign(x) * log1p(|x|) of each total) -> VectorAssembler -> StandardScaler
    -> KMeans

The transform comes first because the totals are heavy-tailed: on the real UCI file, scaled raw
totals let silhouette pick k=2 with 19 customers against 4,319 (the few giants against everyone
else). In log space the bulk of the customers spreads out and the giants are only somewhat
further away. Signed log1p rather than log1p because totals can be zero or negative (returns);
rather than asinh because Spark's asinh is inaccurate for negative and huge values (see
pipelines/training/feature_transform.py, which also holds the statement, shared with serving).
`transform="none"` leaves the stage out (the earlier recipe, for comparison).

Scaling is part of the model because, even in log space, the features have different spreads and
would otherwise weigh differently. The server reads these same stages back without Spark
(serving/predictor.py), so a change here must be mirrored there.
"""

from __future__ import annotations

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame

from pipelines.data.schema import FEATURES
from pipelines.training import feature_transform
from pipelines.training.feature_transform import DEFAULT_TRANSFORM, SIGNED_LOG1P, TRANSFORMS

# MLflow's pyfunc flavour (and so `mlflow models serve`) reads the Spark column "prediction".
PREDICTION_COL = "prediction"
FEATURES_COL = "features"


def feature_stages(transform: str = DEFAULT_TRANSFORM) -> list:
    """The stages before KMeans: [transform,] assemble, scale; they write FEATURES_COL."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    stages: list = []
    columns = list(FEATURES)
    if transform == SIGNED_LOG1P:
        stages.append(SQLTransformer(statement=feature_transform.statement(FEATURES)))
        columns = [feature_transform.output_column(c) for c in FEATURES]
    stages.append(VectorAssembler(inputCols=columns, outputCol="raw_features"))
    stages.append(
        StandardScaler(inputCol="raw_features", outputCol=FEATURES_COL, withMean=True, withStd=True)
    )
    return stages


def kmeans_stage(
    k: int, seed: int = 42, max_iter: int = 50, distance_measure: str = "euclidean"
) -> KMeans:
    """KMeans with the row solver named: left at "auto", every fit first runs a Spark job to
    choose between row and block, and on three features it always chooses row (Spark 4.3's
    density test), so naming it saves the job and changes nothing (measured: same centers)."""
    return KMeans(
        featuresCol=FEATURES_COL,
        predictionCol=PREDICTION_COL,
        k=k,
        seed=seed,
        maxIter=max_iter,
        distanceMeasure=distance_measure,
        solver="row",
    )


def build_pipeline(
    k: int,
    seed: int = 42,
    max_iter: int = 50,
    distance_measure: str = "euclidean",
    transform: str = DEFAULT_TRANSFORM,
) -> Pipeline:
    stages = feature_stages(transform)
    return Pipeline(stages=[*stages, kmeans_stage(k, seed, max_iter, distance_measure)])


def fit_features(features: DataFrame, transform: str = DEFAULT_TRANSFORM) -> PipelineModel:
    """The fitted stages before KMeans (only the scaler learns anything): fitted once per window,
    shared by every candidate k."""
    return Pipeline(stages=feature_stages(transform)).fit(features)
