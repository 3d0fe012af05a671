"""Fit the recipe for each candidate k and choose one.

Per window the features are transformed, assembled and scaled once and each candidate k is fitted
on that scaled frame: the result is the `PipelineModel` that `build_pipeline(k).fit` gives on the
same partitioning, without redoing the first stages per k. On a few thousand customers a Spark job
costs its scheduling, not its work (~0.1 s of JVM CPU even for a trivial one), and a KMeans fit is
about twenty jobs, so the fits are made as cheap per job as they go (see `fit_candidates`) and
fitted a few at a time; the silhouettes are computed from one job that scores every candidate
(pipelines/training/scoring.py, silhouette.py), not two jobs per candidate.

Choosing: the highest silhouette among the *eligible* candidates, those whose every cluster holds
at least `min_cluster_share` of the customers. Silhouette alone rewards isolating a handful of
extreme customers (on the real UCI file: k=2, 19 customers against 4,319, silhouette 0.993), a
segmentation nobody can use. When no candidate is eligible the choice falls back to the candidate
whose smallest cluster is largest (the one closest to the rule; ties by silhouette), and says so:
the training logs a warning and the run's `k_selection` param records the fallback. A fixed k is
taken as given, whatever its cluster shares.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark.ml import PipelineModel
from pyspark.ml.clustering import KMeansModel
from pyspark.sql import DataFrame
from tqdm import tqdm

from pipelines.training.feature_transform import DEFAULT_TRANSFORM
from pipelines.training.recipe import FEATURES_COL, fit_features, kmeans_stage
from pipelines.training.scoring import Scores, score
from pipelines.training.silhouette import SILHOUETTE_DISTANCE, silhouette

DISTANCE_MEASURES = tuple(SILHOUETTE_DISTANCE)
FIT_THREADS = 4  # candidate k fitted at once
# Jobs on per-customer features are latency-bound: keep them in as few partitions as their size
# allows (one for the few thousand customers of the UCI file).
CUSTOMERS_PER_PARTITION = 100_000
DEFAULT_K_RANGE = (3, 8)
DEFAULT_MIN_CLUSTER_SHARE = 0.02

FIXED = "fixed"
SILHOUETTE = "silhouette"
FALLBACK = "fallback-largest-smallest-cluster"


@dataclass(frozen=True)
class Candidate:
    """One fitted k: the whole pipeline model, how good it is and how it splits the customers."""

    k: int
    model: PipelineModel
    silhouette: float
    cost: float
    sizes: tuple[int, ...]

    @property
    def shares(self) -> tuple[float, ...]:
        total = sum(self.sizes)
        return tuple(size / total for size in self.sizes)

    @property
    def min_share(self) -> float:
        return min(self.shares)

    def eligible(self, min_cluster_share: float) -> bool:
        return self.min_share >= min_cluster_share


@dataclass(frozen=True)
class Selection:
    """The chosen candidate and how it was chosen: FIXED, SILHOUETTE or FALLBACK."""

    chosen: Candidate
    rule: str
    min_cluster_share: float

    def why_not(self, candidate: Candidate) -> str:
        """'' for the chosen one, else why it lost, for people reading a comparison."""
        if candidate is self.chosen:
            return ""
        if self.rule != FIXED and not candidate.eligible(self.min_cluster_share):
            return (
                f"ineligible: smallest cluster {candidate.min_share:.1%} "
                f"< {self.min_cluster_share:.1%}"
            )
        return "lower silhouette" if self.rule == SILHOUETTE else "not chosen"


def candidate_ks(k: int | None, k_range: tuple[int, int], customers: int) -> list[int]:
    """The k to try: the given one, or the range clipped to what silhouette can score."""
    low, high = (k, k) if k else k_range
    ks = [c for c in range(max(low, 2), min(high, customers - 1) + 1)]
    if not ks:
        raise ValueError(f"no k in {low}..{high} fits {customers} customers (need 2 <= k < n)")
    return ks


@dataclass(frozen=True)
class Fitted:
    """Every candidate of one set of customers, and how each (and the previous model) places
    every customer: what the choice, the segments and the drift are computed from."""

    candidates: list[Candidate]
    scores: Scores


def fit_candidates(
    features: DataFrame,
    customers: int,
    ks: list[int],
    seed: int,
    max_iter: int,
    distance_measure: str,
    progress: tqdm | None = None,
    transform: str = DEFAULT_TRANSFORM,
    previous_model: PipelineModel | None = None,
) -> Fitted:
    """Fit the pipeline for every k in `ks`: transform and scale once, fit KMeans per k on the
    result, then score every customer under every candidate (and `previous_model`) in one job.

    The scaled frame KMeans reads is checkpointed locally rather than cached: every task of every
    KMeans job ships its input's lineage, and a cached frame's lineage is the whole query that made
    it (Parquet scan, cleaning, aggregation, sort, transform, scaling), serialised on the driver and
    read back in the task each time. A checkpoint cuts it to the stored rows: a third less JVM CPU
    per fit, the same rows in the same order, so the same model (measured: identical centers).
    """
    prepared = fit_features(features, transform)
    partitions = max(1, customers // CUSTOMERS_PER_PARTITION)
    scaled = prepared.transform(features).select(FEATURES_COL).coalesce(partitions)
    scaled = scaled.localCheckpoint()

    def fit(k: int) -> tuple[int, KMeansModel]:
        kmeans = kmeans_stage(k, seed, max_iter, distance_measure).fit(scaled)
        if progress is not None:
            progress.update()
        return k, kmeans

    if progress is not None:
        progress.total += len(ks)
        progress.refresh()
    with ThreadPoolExecutor(FIT_THREADS) as pool:
        models = dict(pool.map(fit, ks))
    scores = score(features, prepared, models, previous_model)
    distance = SILHOUETTE_DISTANCE[distance_measure]
    candidates = [
        Candidate(
            k,
            PipelineModel([*prepared.stages, kmeans]),
            silhouette(scores.points, scores.clusters[k], distance),
            kmeans.summary.trainingCost,
            tuple(kmeans.summary.clusterSizes),  # computed by the fit itself: no job
        )
        for k, kmeans in models.items()
    ]
    return Fitted(candidates, scores)


def choose(
    candidates: list[Candidate],
    min_cluster_share: float = DEFAULT_MIN_CLUSTER_SHARE,
    fixed: bool = False,
) -> Selection:
    """Highest silhouette among candidates with every cluster >= `min_cluster_share` (a tie: the
    smaller k); none eligible: the largest smallest cluster. `fixed`: the one candidate, as is."""
    if fixed:
        (only,) = candidates
        return Selection(only, FIXED, min_cluster_share)
    eligible = [c for c in candidates if c.eligible(min_cluster_share)]
    if eligible:
        chosen = max(eligible, key=lambda c: (c.silhouette, -c.k))
        return Selection(chosen, SILHOUETTE, min_cluster_share)
    chosen = max(candidates, key=lambda c: (c.min_share, c.silhouette, -c.k))
    return Selection(chosen, FALLBACK, min_cluster_share)
