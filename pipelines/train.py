"""Train one segmentation model per stream window; track every run and register every model.

    python -m pipelines.train [--windows-dir DIR] [--windows 3] [--mode cumulative|tumbling]
                              [--k K] [--k-min 2] [--k-max 8] [--seed 42] [--max-iter 50]

Model i is fitted on windows 1..i (cumulative) or window i alone (tumbling), read from the Parquet
files the consumer wrote; one SparkSession serves every window. Per window the features are
assembled and scaled once and each candidate k is fitted on that cached, scaled frame: the result
is the `PipelineModel` that `build_pipeline(k).fit` gives on the same partitioning, without
redoing the first two stages per k. On a few thousand customers each Spark job is mostly
scheduling latency, so candidates are fitted a few at a time and a window is logged while the
next one is fitted.

Each window is one MLflow run `window-<i>` and one new version of the registered model. Aliases
`model<i>` move only after every window has been registered, so they never mix two trainings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.utils.time import get_current_time_millis
from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.sql import DataFrame, SparkSession
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipelines import cli, registry
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.features import CLEANING_RULES, Cleaned, clean, customer_features
from pipelines.report import (
    ModelProfile,
    comparison_table,
    plot_comparison,
    plot_profile,
    write_centers,
)
from pipelines.schema import FEATURES
from pipelines.segmentation import PREDICTION_COL, build_pipeline
from pipelines.windows import Manifest, combine_digests, read_manifests, window_path

log = logging.getLogger(__name__)

MODES = ("cumulative", "tumbling")
DISTANCE_MEASURES = ("euclidean", "cosine")
# ClusteringEvaluator's distance for the silhouette of each KMeans distance measure.
SILHOUETTE_DISTANCE = {"euclidean": "squaredEuclidean", "cosine": "cosine"}
FIT_THREADS = 4  # candidate k fitted at once
# Jobs on per-customer features are latency-bound: keep them in as few partitions as their size
# allows (one for the few thousand customers of the UCI file).
CUSTOMERS_PER_PARTITION = 100_000
MODEL_ARTIFACT_PATH = "model"

# Explicit, so no run pays MLflow's requirement inference (a subprocess, ~17 s per model).
PIP_PACKAGES = ("mlflow", "pyspark", "pandas", "numpy", "pyarrow")

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("long", "TotalQuantity"),
            ColSpec("double", "TotalAmount"),
            ColSpec("long", "NumInvoices"),
        ]
    ),
    outputs=Schema([ColSpec("integer", PREDICTION_COL)]),
)


@dataclass(frozen=True)
class TrainedWindow:
    """What one window's training left in MLflow."""

    window: int
    run_id: str
    version: int
    alias: str
    k: int
    silhouette: float


@dataclass(frozen=True)
class Candidate:
    """One fitted k: the whole pipeline model and how good it is."""

    k: int
    model: PipelineModel
    silhouette: float
    cost: float


def spark_session(master: str) -> SparkSession:
    """The one session for all windows, tuned for jobs over a few thousand customers."""
    builder = (
        SparkSession.builder.master(master)
        .appName("customer-segmentation-train")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # the job shows its own progress
        .config("spark.sql.shuffle.partitions", "4")
        # Adaptive execution re-plans at every shuffle; at this size there is nothing to
        # coalesce or split and the planning was ~15% of the job's CPU.
        .config("spark.sql.adaptive.enabled", "false")
    )
    if master.startswith("local"):
        # A training is a short-lived JVM running small jobs: the C2 compiler spent more CPU
        # compiling than its code saved (a third of the job's CPU). The code cache keeps the
        # size it has with C2, or it fills up and compilation stops. Local only: there the
        # driver is also the executor, and no cluster-wide driver options are overridden.
        builder = builder.config(
            "spark.driver.extraJavaOptions",
            "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m",
        )
    try:
        return builder.getOrCreate()
    except KeyboardInterrupt:
        _stop_children()
        raise


def _stop_children() -> None:
    """Ctrl-C while PySpark waits for its new JVM leaves that JVM running, orphaned, with 1 GB:
    PySpark removes the directory where the JVM was to write its port, and the JVM never gets to
    the point where it exits with its parent. At that moment the JVM is our only child."""
    for children in Path("/proc/self/task").glob("*/children"):  # Linux; elsewhere none found
        for pid in children.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


def training_windows(window: int, mode: str) -> list[int]:
    return list(range(1, window + 1)) if mode == "cumulative" else [window]


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
) -> list[Candidate]:
    """Fit the pipeline for every k in `ks`; scale once, fit KMeans per k on the cached result."""
    assembler, scaler, _ = build_pipeline(ks[0], seed, max_iter, distance_measure).getStages()
    assembled = assembler.transform(features)
    scaler_model = scaler.fit(assembled)
    partitions = max(1, customers // CUSTOMERS_PER_PARTITION)
    scaled = scaler_model.transform(assembled).select(scaler.getOutputCol()).coalesce(partitions)
    scaled = scaled.cache()
    evaluator = ClusteringEvaluator(
        featuresCol=scaler.getOutputCol(),
        predictionCol=PREDICTION_COL,
        distanceMeasure=SILHOUETTE_DISTANCE[distance_measure],
    )

    def fit(k: int) -> Candidate:
        kmeans = build_pipeline(k, seed, max_iter, distance_measure).getStages()[-1].fit(scaled)
        silhouette = evaluator.evaluate(kmeans.transform(scaled))
        if progress is not None:
            progress.update()
        model = PipelineModel([assembler, scaler_model, kmeans])
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


@dataclass(frozen=True)
class Spec:
    """The choices one training applies to every window."""

    mode: str = "cumulative"
    k: int | None = None
    k_range: tuple[int, int] = (2, 8)
    seed: int = 42
    max_iter: int = 50
    distance_measure: str = "euclidean"
    # The training covers windows first_window..N; its i-th window gets alias model<i>.
    first_window: int = 1

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
    chosen: Candidate
    example: pd.DataFrame
    profile: ModelProfile


def fit_window(
    spark: SparkSession, windows_dir: Path, window: int, spec: Spec, progress: tqdm | None = None
) -> WindowFit:
    """Read the window's training set, clean it, build features, fit and choose the model."""
    ids = training_windows(window, spec.mode)
    cleaned = clean(spark.read.parquet(*[str(window_path(windows_dir, i)) for i in ids]))
    features = customer_features(cleaned.rows).cache()
    try:
        customers = features.count()
        ks = candidate_ks(spec.k, spec.k_range, customers)
        log.info(
            "window %d: windows %s, %d rows read, dropped %s; %d customers, k in %s",
            window,
            ids,
            cleaned.rows_read,
            cleaned.dropped,
            customers,
            ks,
        )
        candidates = fit_candidates(
            features, customers, ks, spec.seed, spec.max_iter, spec.distance_measure, progress
        )
        example = features.select(*FEATURES).limit(5).toPandas()
    finally:
        features.unpersist()
    chosen = best(candidates)
    profile = ModelProfile.of(window, chosen.model, chosen.silhouette)
    return WindowFit(window, ids, cleaned, customers, candidates, chosen, example, profile)


def train_windows(
    windows_dir: Path,
    windows: int = 3,
    mode: str = "cumulative",
    k: int | None = None,
    k_range: tuple[int, int] = (2, 8),
    seed: int = 42,
    max_iter: int = 50,
    distance_measure: str = "euclidean",
    settings: Settings | None = None,
    spark: SparkSession | None = None,
    first_window: int = 1,
) -> list[TrainedWindow]:
    """Train, log and register windows `first_window`..`windows`; then point aliases model1..
    at them, in that order (a second demo run trains windows 4..6 into model1..model3).

    Sets MLflow's tracking URI to the settings' one. Window i+1 is fitted while window i is being
    logged (MLflow calls and the model's Parquet writes are mostly waiting); one logging thread
    keeps the registry versions in window order. (Fitting the windows concurrently as well was
    slower: on two cores their jobs only crowd each other.)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if distance_measure not in DISTANCE_MEASURES:
        raise ValueError(f"distance_measure must be one of {DISTANCE_MEASURES}")
    if not 1 <= first_window <= windows:
        raise ValueError(f"need 1 <= first_window <= windows, got {first_window} and {windows}")
    spec = Spec(mode, k, k_range, seed, max_iter, distance_measure, first_window)
    settings = settings or Settings.from_env()
    manifests = _manifests(windows_dir, windows)
    # `mlflow run` hands its run over MLFLOW_RUN_ID: the window runs become its children rather
    # than all resuming that one run.
    parent_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    with (
        ThreadPoolExecutor(1, thread_name_prefix="mlflow-logging") as logging_thread,
        tqdm(total=0, desc="fitting", unit="k") as progress,
    ):
        # Opening (or creating) the store overlaps the JVM's start; a bad URI still fails first.
        experiment = logging_thread.submit(_experiment_id, client, settings)
        own_session = spark is None
        spark = spark or spark_session(settings.spark_master)
        try:
            recorder = _Recorder(
                client, settings, experiment.result(), parent_run_id, windows_dir, manifests, spec
            )
            pending, previous = [], None
            for window in range(first_window, windows + 1):
                fitted = fit_window(spark, windows_dir, window, spec, progress)
                pending.append(logging_thread.submit(recorder.record, fitted, previous))
                previous = fitted.profile
            trained = [future.result() for future in pending]
        finally:
            if own_session:
                spark.stop()
    for result in trained:
        client.set_registered_model_alias(settings.model_name, result.alias, str(result.version))
    if parent_run_id:
        summary = ", ".join(f"{r.alias}=v{r.version}" for r in trained)
        client.set_tag(parent_run_id, "registered_versions", summary)
    return trained


@dataclass(frozen=True)
class _Recorder:
    """Logs a fitted window as an MLflow run and registers its model."""

    client: MlflowClient
    settings: Settings
    experiment_id: str
    parent_run_id: str | None
    windows_dir: Path
    manifests: dict[int, Manifest]
    spec: Spec

    def record(self, fit: WindowFit, previous: ModelProfile | None) -> TrainedWindow:
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"window-{fit.window}",
            parent_run_id=self.parent_run_id,
        ) as run:
            run_id = run.info.run_id
            self.client.log_batch(
                run_id,
                metrics=_metrics(fit.candidates, fit.chosen),
                params=[Param(key, str(value)) for key, value in self._params(fit).items()],
                tags=[RunTag(key, value) for key, value in self._tags(fit.window).items()],
            )
            with tempfile.TemporaryDirectory() as tmp:
                self._log_reports(run_id, Path(tmp), fit.profile, previous)
            mlflow.spark.log_model(
                fit.chosen.model,
                MODEL_ARTIFACT_PATH,
                signature=SIGNATURE,
                input_example=fit.example,
                pip_requirements=[f"{p}=={installed_version(p)}" for p in PIP_PACKAGES],
            )
        chosen = fit.chosen
        description = (
            f"Window {fit.window} ({self.spec.mode}, trained on windows {_ids(fit.ids)}): "
            f"k={chosen.k}, silhouette={chosen.silhouette:.4f}, {fit.cleaned.rows_kept} rows, "
            f"{fit.customers} customers. Run {run_id}."
        )
        version = registry.register_version(
            self.client,
            self.settings.model_name,
            run_id,
            MODEL_ARTIFACT_PATH,
            description,
            tags={"window": fit.window, "mode": self.spec.mode, "k": chosen.k},
        )
        log.info(
            "window %d: k=%d silhouette=%.4f -> %s version %s",
            fit.window,
            chosen.k,
            chosen.silhouette,
            self.settings.model_name,
            version.version,
        )
        return TrainedWindow(
            window=fit.window,
            run_id=run_id,
            version=int(version.version),
            alias=self.spec.alias(fit.window),
            k=chosen.k,
            silhouette=chosen.silhouette,
        )

    def _params(self, fit: WindowFit) -> dict[str, object]:
        spec, cleaned = self.spec, fit.cleaned
        low, high = (spec.k, spec.k) if spec.k else spec.k_range
        params: dict[str, object] = {
            "k": fit.chosen.k,
            "k_range": f"{low}..{high}",
            "k_selection": "fixed" if spec.k else "silhouette",
            "seed": spec.seed,
            "max_iter": spec.max_iter,
            "distance_measure": spec.distance_measure,
            "silhouette_distance": SILHOUETTE_DISTANCE[spec.distance_measure],
            "mode": spec.mode,
            "windows": _ids(fit.ids),
            "rows_read": cleaned.rows_read,
            "rows": cleaned.rows_kept,
            "customers": fit.customers,
            **{f"dropped_{rule}": cleaned.dropped[rule] for rule in CLEANING_RULES},
            "first_invoice_date": cleaned.first_invoice_date,
            "last_invoice_date": cleaned.last_invoice_date,
            "kafka_topic": ",".join(sorted({self.manifests[i].topic for i in fit.ids})),
            "digest": combine_digests([self.manifests[i].digest for i in fit.ids]),
        }
        for i in fit.ids:
            manifest = self.manifests[i]
            offsets = ",".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(manifest.offsets.items()))
            params[f"window_{i}_offsets"] = offsets
            params[f"window_{i}_digest"] = manifest.digest
            params[f"window_{i}_rows"] = manifest.rows
        return params

    def _tags(self, window: int) -> dict[str, str]:
        topics = sorted({m.topic for m in self.manifests.values()})
        return {
            "window": str(window),
            "data_source": ",".join(f"kafka:{t}" for t in topics),
            "windows_dir": str(self.windows_dir.resolve()),
            "mlflow.source.git.commit": _git_commit(),
        }

    def _log_reports(
        self, run_id: str, folder: Path, profile: ModelProfile, previous: ModelProfile | None
    ) -> None:
        write_centers(profile, folder / "cluster_centers.csv")
        plot_profile(profile, folder / "cluster_profile.png")
        if previous is None:
            against = f"none: window {profile.window} is the first of this training"
        else:
            against = f"window-{previous.window} of this training"
        table = comparison_table(profile, previous, against)
        table.to_csv(folder / "comparison.csv", index=False)
        plot_comparison(table, profile, previous, folder / "comparison.png")
        self.client.log_artifacts(run_id, str(folder))


def _metrics(candidates: list[Candidate], chosen: Candidate) -> list[Metric]:
    now = get_current_time_millis()
    kmeans = chosen.model.stages[-1]
    metrics = [
        Metric("silhouette", chosen.silhouette, now, 0),
        Metric("training_cost", chosen.cost, now, 0),
    ]
    metrics += [Metric("silhouette_by_k", c.silhouette, now, c.k) for c in candidates]
    metrics += [Metric("training_cost_by_k", c.cost, now, c.k) for c in candidates]
    metrics += [
        Metric(f"cluster_size_{cluster}", size, now, 0)
        for cluster, size in enumerate(kmeans.summary.clusterSizes)
    ]
    return metrics


def _manifests(windows_dir: Path, windows: int) -> dict[int, Manifest]:
    """The manifests of windows 1..`windows`; a missing one means the consumer has not got there."""
    manifests = {m.window: m for m in read_manifests(windows_dir)}
    missing = [i for i in range(1, windows + 1) if i not in manifests]
    if missing:
        raise FileNotFoundError(
            f"{windows_dir}: need complete windows 1..{windows}, missing {missing} "
            "(run the consumer first: python -m pipelines.consume)"
        )
    return manifests


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    """The experiment, created on first use; a SQLite store keeps its artifacts beside the file.

    MLflow would put them under ./mlruns of whatever the working directory is. That is its own
    default, kept when the database is in the working directory (`sqlite:///mlflow.db`).
    """
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        if folder != Path.cwd().resolve():
            location = (folder / "mlruns").as_uri()
    return client.create_experiment(settings.experiment_name, artifact_location=location)


@functools.cache  # the same for every window of a training
def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _ids(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI, also parsed by tests/test_project_files.py against MLproject's train command."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--windows-dir", type=Path, default=settings.windows_dir)
    parser.add_argument("--windows", type=int, default=3, help="train windows up to N")
    parser.add_argument("--first-window", type=int, default=1, help="train windows from this one")
    parser.add_argument("--mode", choices=MODES, default="cumulative")
    parser.add_argument("--k", type=int, default=0, help="fixed k; 0 = choose by silhouette")
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--distance-measure", choices=DISTANCE_MEASURES, default="euclidean")
    return parser


def _not_from_py4j(record: logging.LogRecord) -> bool:
    """py4j logs to the root logger the errors it then raises: on Ctrl-C, pages of tracebacks."""
    return f"{os.sep}py4j{os.sep}" not in record.pathname


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    args = parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().addFilter(_not_from_py4j)
    log.setLevel(logging.INFO)
    with logging_redirect_tqdm():
        trained = train_windows(
            args.windows_dir,
            windows=args.windows,
            mode=args.mode,
            k=args.k or None,
            k_range=(args.k_min, args.k_max),
            seed=args.seed,
            max_iter=args.max_iter,
            distance_measure=args.distance_measure,
            settings=settings,
            first_window=args.first_window,
        )
    print(f"{'window':>6}  {'alias':<7} {'version':>7}  {'k':>2}  {'silhouette':>10}  run")
    for t in trained:
        print(
            f"{t.window:>6}  {t.alias:<7} {t.version:>7}  {t.k:>2}  {t.silhouette:>10.4f}  "
            f"{t.run_id}"
        )


if __name__ == "__main__":
    cli.run(main)
