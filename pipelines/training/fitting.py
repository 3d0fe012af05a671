"""One window's fit: read its training set, clean it, build features, fit the candidates, choose.

Model i is fitted on windows 1..i (cumulative), window i alone (tumbling) or the last `span`
windows up to i (sliding), read from the Parquet files the consumer wrote. Given the window before
(`PreviousWindow`), its model scores the new customers too and the fit carries the drift against
it (pipelines/training/drift.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from tqdm import tqdm

from pipelines.config import DEFAULT_WINDOWS
from pipelines.ingest.window_files import window_path
from pipelines.training import registry
from pipelines.training.drift import (
    CLUSTER,
    PREVIOUS_CLUSTER,
    Drift,
    HistoryPoint,
    Snapshot,
    measure,
)
from pipelines.training.feature_transform import DEFAULT_TRANSFORM, TRANSFORMS
from pipelines.training.features import Cleaned, clean, customer_features
from pipelines.training.report import ModelProfile
from pipelines.training.segments import profile_segments
from pipelines.training.selection import (
    DEFAULT_K_RANGE,
    DEFAULT_MIN_CLUSTER_SHARE,
    DISTANCE_MEASURES,
    FALLBACK,
    Candidate,
    Selection,
    candidate_ks,
    choose,
    fit_candidates,
)

log = logging.getLogger(__name__)

MODES = ("cumulative", "tumbling", "sliding")
# Windows a sliding model is trained on: as many as a batch training has models.
DEFAULT_SPAN = DEFAULT_WINDOWS
EXAMPLE_CUSTOMERS = 5  # rows of the logged model's input example


def training_windows(window: int, mode: str, span: int = DEFAULT_SPAN) -> list[int]:
    """The windows model `window` is trained on, in the given mode."""
    if mode == "cumulative":
        return list(range(1, window + 1))
    if mode == "sliding":
        return list(range(max(1, window - span + 1), window + 1))
    return [window]


@dataclass(frozen=True)
class Spec:
    """The choices one training applies to every window."""

    mode: str = "cumulative"
    span: int = DEFAULT_SPAN  # windows per model in the sliding mode
    k: int | None = None
    k_range: tuple[int, int] = DEFAULT_K_RANGE
    seed: int = 42
    max_iter: int = 50
    distance_measure: str = "euclidean"
    transform: str = DEFAULT_TRANSFORM
    # A k whose smallest cluster holds less than this share of the customers is not chosen.
    min_cluster_share: float = DEFAULT_MIN_CLUSTER_SHARE
    # The training covers windows first_window..N; its i-th window gets alias model<i>.
    first_window: int = 1

    def __post_init__(self) -> None:
        """Refuse a bad choice before any Spark job, naming it."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.span < 1:
            raise ValueError(f"span must be >= 1 window, got {self.span}")
        if self.distance_measure not in DISTANCE_MEASURES:
            raise ValueError(f"distance_measure must be one of {DISTANCE_MEASURES}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if not 0 <= self.min_cluster_share < 1:
            raise ValueError(f"min_cluster_share must be in [0, 1), got {self.min_cluster_share}")
        if self.first_window < 1:
            raise ValueError(f"first_window must be >= 1, got {self.first_window}")

    def alias(self, window: int) -> str:
        return registry.alias_for(window - self.first_window + 1)


@dataclass(frozen=True)
class WindowFit:
    """One window's fitted candidates, before anything is logged."""

    window: int
    ids: list[int]
    cleaned: Cleaned
    customers: int
    candidates: list[Candidate]
    selection: Selection
    example: pd.DataFrame
    segments: pd.DataFrame  # segments.profile_segments of the chosen model on its customers
    snapshot: Snapshot  # the chosen model's profile, its scored customers and segment names
    drift: Drift | None  # against the previous window; None for the first
    history: tuple[HistoryPoint, ...]  # the drift chart: every window of the training up to this

    @property
    def chosen(self) -> Candidate:
        return self.selection.chosen

    @property
    def profile(self) -> ModelProfile:
        return self.snapshot.profile


@dataclass(frozen=True)
class PreviousWindow:
    """What the next window's fit and run need from this one, handed on by the caller.

    Explicit rather than kept by the training, so a loop over windows (pipelines/train.py) and
    a service fitting one closed window at a time pass the same thing to `fit_window` and
    `Recorder.record`.
    """

    snapshot: Snapshot
    model: PipelineModel  # scores the next window's customers for the drift's ARI and map
    history: tuple[HistoryPoint, ...]

    @classmethod
    def of(cls, fit: WindowFit) -> PreviousWindow:
        return cls(fit.snapshot, fit.chosen.model, fit.history)

    @property
    def profile(self) -> ModelProfile:
        return self.snapshot.profile


@dataclass(frozen=True)
class CustomerFit:
    """The candidates fitted on one set of customers, the one chosen and its named segments."""

    customers: int
    candidates: list[Candidate]
    selection: Selection
    segments: pd.DataFrame  # segments.profile_segments of the chosen model on these customers
    example: pd.DataFrame  # a few customers' features: the logged model's input example
    # Every customer's FEATURES and CLUSTER under the chosen model, and PREVIOUS_CLUSTER under
    # the previous window's when there is one: what the drift reads.
    scored: pd.DataFrame


def fit_customers(
    features: DataFrame,
    spec: Spec,
    what: str,
    progress: tqdm | None = None,
    previous_model: PipelineModel | None = None,
) -> CustomerFit:
    """Fit every candidate k on `features` (one row per customer), choose one and profile it.

    Training runs this per window and `pipelines.evaluate` on a whole file, so both judge the
    recipe the same way. `what` names the customers in the log ("window 2", a file).
    `previous_model`, the previous window's, also places every customer, for the drift.
    """
    features = features.cache()
    try:
        customers = features.count()
        ks = candidate_ks(spec.k, spec.k_range, customers)
        log.info("%s: %d customers, k in %s", what, customers, ks)
        fitted = fit_candidates(
            features,
            customers,
            ks,
            spec.seed,
            spec.max_iter,
            spec.distance_measure,
            progress,
            spec.transform,
            previous_model,
        )
    finally:
        features.unpersist()
    selection = choose(fitted.candidates, spec.min_cluster_share, fixed=bool(spec.k))
    chosen, scores = selection.chosen, fitted.scores
    clusters = scores.clusters[chosen.k]
    scored = scores.customers.assign(**{CLUSTER: clusters})
    if scores.previous is not None:
        scored[PREVIOUS_CLUSTER] = scores.previous
    if selection.rule == FALLBACK:
        log.warning(
            "%s: no k in %s has every cluster >= %.1f%% of the customers; "
            "falling back to k=%d, whose smallest cluster is largest (%.1f%%)",
            what,
            ks,
            100 * spec.min_cluster_share,
            chosen.k,
            100 * chosen.min_share,
        )
    elif chosen.min_share < spec.min_cluster_share:
        log.warning(
            "%s: fixed k=%d has a cluster of %.1f%% of the customers",
            what,
            chosen.k,
            100 * chosen.min_share,
        )
    return CustomerFit(
        customers,
        fitted.candidates,
        selection,
        profile_segments(scores.customers, clusters, chosen.k),
        scores.customers.head(EXAMPLE_CUSTOMERS),
        scored,
    )


def fit_window(
    spark: SparkSession,
    windows_dir: Path,
    window: int,
    spec: Spec,
    progress: tqdm | None = None,
    previous: PreviousWindow | None = None,
) -> WindowFit:
    """Read the window's training set, clean it, build features, fit and choose the model;
    measure its drift against `previous` (the window before, if there is one)."""
    ids = training_windows(window, spec.mode, spec.span)
    cleaned = clean(spark.read.parquet(*[str(window_path(windows_dir, i)) for i in ids]))
    log.info(
        "window %d: windows %s, %d rows read, dropped %s",
        window,
        ids,
        cleaned.rows_read,
        cleaned.dropped,
    )
    previous_model = previous.model if previous else None
    features = customer_features(cleaned.rows)
    fit = fit_customers(features, spec, f"window {window}", progress, previous_model)
    chosen = fit.selection.chosen
    profile = ModelProfile.of(window, chosen.model, chosen.silhouette)
    snapshot = Snapshot(profile, fit.scored, tuple(fit.segments["name"]))
    drift = measure(snapshot, previous.snapshot) if previous else None
    point = HistoryPoint(window, chosen.silhouette, drift.metrics() if drift else {})
    return WindowFit(
        window,
        ids,
        cleaned,
        fit.customers,
        fit.candidates,
        fit.selection,
        fit.example,
        fit.segments,
        snapshot,
        drift,
        (*(previous.history if previous else ()), point),
    )
