"""Every customer's place under every candidate model, collected in one Spark job.

What a window needs after its fits all reads the same few thousand customers: each candidate's
silhouette (pipelines/training/silhouette.py), the chosen model's segments (segments.py) and the
drift against the previous window's model (drift.py). Each used to be its own Spark jobs (two for
every silhouette, one for the segments, one for the drift), and on this little data a job costs
its scheduling, not its work. So Spark assigns the clusters, with the fitted models themselves,
and everything after is pandas and numpy on what this one job brings back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.clustering import KMeansModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.data.schema import FEATURES
from pipelines.training.recipe import FEATURES_COL, PREDICTION_COL

_POINT = "_point"
_PREVIOUS = "_previous"


def _cluster_column(k: int) -> str:
    return f"_cluster_{k}"


@dataclass(frozen=True)
class Scores:
    """The customers as the candidates see them, in the order of the features frame."""

    customers: pd.DataFrame  # FEATURES of each customer
    points: np.ndarray  # each customer where KMeans works: transformed and scaled (n x d)
    clusters: dict[int, np.ndarray]  # k -> each customer's cluster under the candidate for k
    previous: np.ndarray | None  # each customer's cluster under the previous model, if given


def score(
    features: DataFrame,
    prepared: PipelineModel,
    kmeans: dict[int, KMeansModel],
    previous_model: PipelineModel | None = None,
) -> Scores:
    """Scale `features` with `prepared` (the stages before KMeans) and assign each customer with
    every model in `kmeans` (by k), and with `previous_model` (a whole pipeline) if given."""
    frame = prepared.transform(features.select(*FEATURES))
    for k, model in kmeans.items():
        frame = model.copy().setPredictionCol(_cluster_column(k)).transform(frame)
    columns = [*FEATURES, *(_cluster_column(k) for k in kmeans)]
    frame = frame.select(*columns, vector_to_array(FEATURES_COL).alias(_POINT))
    if previous_model is not None:
        frame = previous_model.transform(frame).select(
            *columns, _POINT, F.col(PREDICTION_COL).alias(_PREVIOUS)
        )
    rows = frame.toPandas()
    return Scores(
        customers=rows[list(FEATURES)],
        points=np.array(rows[_POINT].tolist(), dtype=float).reshape(len(rows), -1),
        clusters={k: rows[_cluster_column(k)].to_numpy() for k in kmeans},
        previous=rows[_PREVIOUS].to_numpy() if previous_model is not None else None,
    )


def place(features: DataFrame, model: PipelineModel, column: str = PREDICTION_COL) -> pd.DataFrame:
    """Every customer's FEATURES and, as `column`, its cluster under `model` (a whole pipeline,
    fitted or loaded), in one Spark job: for one model, where `score` is for a window's fits."""
    placed = model.transform(features.select(*FEATURES))
    prediction = model.stages[-1].getPredictionCol()
    return placed.select(*FEATURES, F.col(prediction).alias(column)).toPandas()
