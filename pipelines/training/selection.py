"""Fit the recipe for each candidate k and choose one.

Per window the features are transformed, assembled and scaled once and each candidate k is fitted
on that cached, scaled frame: the result is the `PipelineModel` that `build_pipeline(k).fit` gives
on the same partitioning, without redoing the first stages per k. On a few thousand customers each
Spark job is mostly scheduling latency, so candidates are fitted a few at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.sql import DataFrame
from tqdm import tqdm

from pipelines.training.feature_transform import DEFAULT_TRANSFORM
from pipelines.training.recipe import FEATURES_COL, PREDICTION_COL, fit_features, kmeans_stage

DISTANCE_MEASURES = ("euclidean", "cosine")
# ClusteringEvaluator's distance for the silhouette of each KMeans distance measure.
SILHOUETTE_DISTANCE = {"euclidean": "squaredEuclidean", "cosine": "cosine"}
FIT_THREADS = 4  # candidate k fitted at once
# Jobs on per-customer features are latency-bound: keep them in as few partitions as their size
# allows (one for the few thousand customers of the UCI file).
CUSTOMERS_PER_PARTITION = 100_000


@dataclass(frozen=True)
class Candidate:
    """One fitted k: the whole pipeline model and how good it is."""

    k: int
    model: PipelineModel
    silhouette: float
    cost: float


def candidate_ks(k: int | None, k_range: tuple[int, int], customers: int) -> list[int]:
    """The k to try: the given one, or the range clipped to what silhouette can score."""
    low, high = (k, k) if k else k_range
    ks = [c for c in range(max(low, 2), min(high, customers - 1) + 1)]
    if not ks:
        raise ValueError(f"no k in {low}..{high} fits {customers} customers (need 2 <= k < n)")
    return ks


def fit_candidates(
    features: DataFrame,
    customers: int,
    ks: list[int],
    seed: int,
    max_iter: int,
    distance_measure: str,
    progress: tqdm | None = None,
    transform: str = DEFAULT_TRANSFORM,
) -> list[Candidate]:
    """Fit the pipeline for every k in `ks`: transform and scale once, fit KMeans per k on the
    cached result."""
    prepared = fit_features(features, transform)
    partitions = max(1, customers // CUSTOMERS_PER_PARTITION)
    scaled = prepared.transform(features).select(FEATURES_COL).coalesce(partitions).cache()
    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES_COL,
        predictionCol=PREDICTION_COL,
        distanceMeasure=SILHOUETTE_DISTANCE[distance_measure],
    )

    def fit(k: int) -> Candidate:
        kmeans = kmeans_stage(k, seed, max_iter, distance_measure).fit(scaled)
        silhouette = evaluator.evaluate(kmeans.transform(scaled))
        if progress is not None:
            progress.update()
        model = PipelineModel([*prepared.stages, kmeans])
        return Candidate(k, model, silhouette, kmeans.summary.trainingCost)

    if progress is not None:
        progress.total += len(ks)
        progress.refresh()
    try:
        with ThreadPoolExecutor(FIT_THREADS) as pool:
            return list(pool.map(fit, ks))
    finally:
        scaled.unpersist()


def best(candidates: list[Candidate]) -> Candidate:
    """Highest silhouette; on a tie the smaller k."""
    return max(candidates, key=lambda c: (c.silhouette, -c.k))
