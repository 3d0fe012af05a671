"""Wall time of training three windows, beside the naive way of doing the same work.

    python -m bench.train [--rows 541909] [--seed 7] [--spark-master local[2]]

Both variants train the same three cumulative windows of a generated dataset with the same recipe
(signed log1p -> scaler -> KMeans; k over 3..8 by silhouette among the k whose every cluster holds
>= 2% of the customers; same seed) into their own SQLite store, and are timed from start to the
last alias: SparkSession, reading, cleaning, every fit, logging and registration.

- fast: `pipelines.train.train_windows` - one SparkSession, features transformed and scaled once
  per window, k candidates fitted concurrently, explicit pip requirements, one batch of params and
  metrics.
- naive: the recipe from the MLflow and Spark docs - a SparkSession per window, the whole pipeline
  fitted per k one after the other, params and metrics logged one call at a time,
  `mlflow.spark.log_model` with its defaults (requirements inferred), `registered_model_name`.
  Its sessions get the same Spark settings as the fast one, so the gap is the job's structure,
  not Spark tuning.

Each variant runs in its own Python process so neither inherits the other's warm JVM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from pyspark.ml.evaluation import ClusteringEvaluator

from pipelines.config import DEFAULT_WINDOWS, PROJECT_ROOT, Settings, sqlite_tracking_uri
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import window_path, write_windows
from pipelines.train import train_windows
from pipelines.training.features import clean, customer_features
from pipelines.training.recipe import PREDICTION_COL, build_pipeline
from pipelines.training.selection import (
    DEFAULT_K_RANGE,
    DEFAULT_MIN_CLUSTER_SHARE,
    Candidate,
    choose,
)
from pipelines.training.session import spark_session

WINDOWS = DEFAULT_WINDOWS
K_RANGE = DEFAULT_K_RANGE
SEED = 42
GOAL_SECONDS = 45.0
GOAL_SPEEDUP = 2.0


def naive_train(windows_dir: Path, settings: Settings) -> None:
    """Three windows the straightforward way; same fits, same registry outcome."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(settings.experiment_name)
    for window in range(1, WINDOWS + 1):
        spark = spark_session(settings.spark_master)
        paths = [str(window_path(windows_dir, i)) for i in range(1, window + 1)]
        cleaned = clean(spark.read.parquet(*paths))
        features = customer_features(cleaned.rows)
        candidates = []
        for k in range(K_RANGE[0], K_RANGE[1] + 1):
            model = build_pipeline(k, SEED).fit(features)
            evaluator = ClusteringEvaluator(predictionCol=PREDICTION_COL)
            silhouette = evaluator.evaluate(model.transform(features))
            summary = model.stages[-1].summary
            sizes = tuple(summary.clusterSizes)
            candidates.append(Candidate(k, model, silhouette, summary.trainingCost, sizes))
        chosen = choose(candidates, DEFAULT_MIN_CLUSTER_SHARE).chosen
        k, silhouette, model = chosen.k, chosen.silhouette, chosen.model
        with mlflow.start_run(run_name=f"window-{window}"):
            mlflow.log_param("k", k)
            mlflow.log_param("transform", "signed-log1p")
            mlflow.log_param("min_cluster_share", DEFAULT_MIN_CLUSTER_SHARE)
            mlflow.log_param("seed", SEED)
            mlflow.log_param("rows", cleaned.rows_kept)
            for rule, count in cleaned.dropped.items():
                mlflow.log_param(f"dropped_{rule}", count)
            mlflow.log_metric("silhouette", silhouette)
            for candidate in candidates:
                mlflow.log_metric("silhouette_by_k", candidate.silhouette, step=candidate.k)
                mlflow.log_metric("min_cluster_share_by_k", candidate.min_share, step=candidate.k)
            for cluster, size in enumerate(model.stages[-1].summary.clusterSizes):
                mlflow.log_metric(f"cluster_size_{cluster}", size)
            info = mlflow.spark.log_model(model, "model", registered_model_name=settings.model_name)
        MlflowClient().set_registered_model_alias(
            settings.model_name, f"model{window}", str(info.registered_model_version)
        )
        spark.stop()


def run_variant(variant: str, windows_dir: Path, store: Path, master: str) -> float:
    settings = replace(
        Settings.from_env(), mlflow_tracking_uri=sqlite_tracking_uri(store), spark_master=master
    )
    started = time.perf_counter()
    if variant == "fast":
        train_windows(windows_dir, windows=WINDOWS, k_range=K_RANGE, seed=SEED, settings=settings)
    else:
        naive_train(windows_dir, settings)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=541_909)
    parser.add_argument("--seed", type=int, default=7, help="of the generated dataset")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--variant", choices=("fast", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # a child: time one variant, print seconds as JSON
        seconds = run_variant(
            args.variant, args.work / "windows", args.work / args.variant, args.spark_master
        )
        print(json.dumps({"seconds": seconds}))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        frame, _ = generate_dataset(args.rows, args.seed)
        write_windows(frame, work / "windows", replay=f"generated-{args.rows}-{args.seed}")
        print(f"{args.rows:,} generated rows in 3 windows in {time.perf_counter() - started:.1f} s")
        print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}", flush=True)
        seconds = {}
        for variant in ("fast", "naive"):
            command = [
                sys.executable,
                "-m",
                "bench.train",
                "--variant",
                variant,
                "--work",
                str(work),
                "--spark-master",
                args.spark_master,
            ]
            # Run where its store is, so MLflow's default ./mlruns is in the temporary folder.
            (work / variant).mkdir()
            done = subprocess.run(
                command,
                cwd=work / variant,
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=subprocess.PIPE,
                check=True,
                text=True,
            )
            seconds[variant] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
            load = os.getloadavg()[0]
            print(f"{variant:>6}: {seconds[variant]:6.1f} s  (load average after: {load:.1f})")

    speedup = seconds["naive"] / seconds["fast"]
    print(
        f"\nthree windows, {args.spark_master}: fast {seconds['fast']:.1f} s, "
        f"naive {seconds['naive']:.1f} s, {speedup:.1f}x faster"
    )
    fast_enough = "met" if seconds["fast"] < GOAL_SECONDS else "MISSED"
    speedup_enough = "met" if speedup >= GOAL_SPEEDUP else "MISSED"
    print(
        f"goals: under {GOAL_SECONDS:.0f} s: {fast_enough}; "
        f"at least {GOAL_SPEEDUP:.0f}x faster: {speedup_enough}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
