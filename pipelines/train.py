"""Train one segmentation model per stream window; track every run and register every model.

    python -m pipelines.train [--windows-dir DIR] [--windows 3] [--mode cumulative|tumbling]
                              [--k K] [--k-min 3] [--k-max 8] [--min-cluster-share 0.02]
                              [--transform signed-log1p|none] [--seed 42] [--max-iter 50]

The loop: one SparkSession serves every window (pipelines/training/session.py); each window is
fitted (training/fitting.py, training/selection.py) and then logged as one MLflow run `window-<i>`
and one new version of the registered model (training/tracking.py), the next window being fitted
while the previous one is logged. Aliases `model<i>` move only after every window has been
registered, so they never mix two trainings. Each window after the first is measured against the
one before it (training/drift.py), which the loop hands on explicitly (`PreviousWindow`).
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from pyspark.sql import SparkSession
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from pipelines import cli
from pipelines.config import DEFAULT_WINDOWS, Settings
from pipelines.ingest.window_files import Manifest, read_manifests
from pipelines.training.feature_transform import DEFAULT_TRANSFORM, TRANSFORMS
from pipelines.training.fitting import MODES, PreviousWindow, Spec, fit_window
from pipelines.training.selection import (
    DEFAULT_K_RANGE,
    DEFAULT_MIN_CLUSTER_SHARE,
    DISTANCE_MEASURES,
)
from pipelines.training.session import not_from_py4j, spark_session
from pipelines.training.tracking import Recorder, TrainedWindow, experiment_id

log = logging.getLogger(__name__)


def train_windows(
    windows_dir: Path,
    windows: int = DEFAULT_WINDOWS,
    settings: Settings | None = None,
    spark: SparkSession | None = None,
    **choices: Any,
) -> list[TrainedWindow]:
    """Train, log and register windows `first_window`..`windows`; then point aliases model1..
    at them, in that order (a second demo run trains windows 4..6 into model1..model3).

    Sets MLflow's tracking URI to the settings' one. Window i+1 is fitted while window i is being
    logged (MLflow calls and the model's Parquet writes are mostly waiting); one logging thread
    keeps the registry versions in window order. (Fitting the windows concurrently as well was
    slower: on two cores their jobs only crowd each other.)
    """
    spec = Spec(**choices)  # mode, k, k_range, seed, ...: see Spec; it checks them
    first_window = spec.first_window
    if not 1 <= first_window <= windows:
        raise ValueError(f"need 1 <= first_window <= windows, got {first_window} and {windows}")
    settings = settings or Settings.from_env()
    manifests = _manifests(windows_dir, windows)
    # `mlflow run` hands its run over MLFLOW_RUN_ID: the window runs become its children rather
    # than all resuming that one run.
    parent_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="mlflow-logging") as logging_thread,
        tqdm(total=0, desc="fitting", unit="k") as progress,
    ):
        # Opening (or creating: seconds of schema migrations) the store overlaps the JVM's start;
        # a bad URI still fails first.
        store = logging_thread.submit(_open_store, settings)
        own_session = spark is None
        spark = spark or spark_session(settings.spark_master)
        try:
            client, experiment = store.result()
            recorder = Recorder(
                client, settings, experiment, parent_run_id, windows_dir, manifests, spec
            )
            pending, previous = [], None
            for window in range(first_window, windows + 1):
                fitted = fit_window(spark, windows_dir, window, spec, progress, previous)
                pending.append(logging_thread.submit(recorder.record, fitted, previous))
                previous = PreviousWindow.of(fitted)
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


def _open_store(settings: Settings) -> tuple[MlflowClient, str]:
    client = MlflowClient()
    return client, experiment_id(client, settings)


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


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks it against MLproject's train command."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--windows-dir", type=Path, default=settings.windows_dir)
    parser.add_argument(
        "--windows", type=int, default=DEFAULT_WINDOWS, help="train windows up to N"
    )
    parser.add_argument("--first-window", type=int, default=1, help="train windows from this one")
    parser.add_argument("--mode", choices=MODES, default="cumulative")
    parser.add_argument("--k", type=int, default=0, help="fixed k; 0 = choose by silhouette")
    parser.add_argument("--k-min", type=int, default=DEFAULT_K_RANGE[0])
    parser.add_argument("--k-max", type=int, default=DEFAULT_K_RANGE[1])
    parser.add_argument(
        "--min-cluster-share",
        type=float,
        default=DEFAULT_MIN_CLUSTER_SHARE,
        help="a k with a cluster below this share of the customers is not chosen",
    )
    parser.add_argument(
        "--transform",
        choices=TRANSFORMS,
        default=DEFAULT_TRANSFORM,
        help="of the three totals before scaling: sign(x) * log1p(|x|), or none",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--distance-measure", choices=DISTANCE_MEASURES, default="euclidean")
    return parser


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    args = parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().addFilter(not_from_py4j)
    log.setLevel(logging.INFO)
    with logging_redirect_tqdm():
        trained = train_windows(
            args.windows_dir,
            windows=args.windows,
            settings=settings,
            mode=args.mode,
            k=args.k or None,
            k_range=(args.k_min, args.k_max),
            seed=args.seed,
            max_iter=args.max_iter,
            distance_measure=args.distance_measure,
            first_window=args.first_window,
            transform=args.transform,
            min_cluster_share=args.min_cluster_share,
        )
    print(f"{'window':>6}  {'alias':<7} {'version':>7}  {'k':>2}  {'silhouette':>10}  run")
    for t in trained:
        print(
            f"{t.window:>6}  {t.alias:<7} {t.version:>7}  {t.k:>2}  {t.silhouette:>10.4f}  "
            f"{t.run_id}"
        )


if __name__ == "__main__":
    cli.run(main)
