"""The segmentation model: one Spark ML Pipeline, saved, registered and served as a whole.

Scaling is part of the model because raw TotalAmount is orders of magnitude larger than the other
features and would otherwise decide every cluster. The server reads these same three stages back
without Spark (serving/predictor.py), so a change here must be mirrored there.
"""

from __future__ import annotations

from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import StandardScaler, VectorAssembler

from pipelines.data.schema import FEATURES

# MLflow's pyfunc flavour (and so `mlflow models serve`) reads the Spark column "prediction".
PREDICTION_COL = "prediction"


def build_pipeline(
    k: int, seed: int = 42, max_iter: int = 50, distance_measure: str = "euclidean"
) -> Pipeline:
    assembler = VectorAssembler(inputCols=list(FEATURES), outputCol="raw_features")
    scaler = StandardScaler(
        inputCol="raw_features", outputCol="features", withMean=True, withStd=True
    )
    kmeans = KMeans(
        featuresCol="features",
        predictionCol=PREDICTION_COL,
        k=k,
        seed=seed,
        maxIter=max_iter,
        distanceMeasure=distance_measure,
    )
    return Pipeline(stages=[assembler, scaler, kmeans])
