"""Evaluate the segmentation recipe on a UCI-format file, without Kafka or MLflow.

    python -m pipelines.evaluate --input FILE [--output RESULT.json] [--k-min 3] [--k-max 8]
                                 [--k K] [--min-cluster-share 0.02]
                                 [--transform signed-log1p|none] [--seed 42] [--max-iter 50]

Prints, per candidate k, the silhouette and cluster shares and which k are ineligible and why,
then the chosen k and its clusters (customers, share, median totals). `--output` also writes all
of it as JSON. The evaluation itself is pipelines/training/evaluate.py.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipelines import cli
from pipelines.config import Settings
from pipelines.data.load import LoadError
from pipelines.training.evaluate import evaluate, report, write_json
from pipelines.training.feature_transform import DEFAULT_TRANSFORM, TRANSFORMS
from pipelines.training.selection import DEFAULT_K_RANGE, DEFAULT_MIN_CLUSTER_SHARE
from pipelines.training.session import not_from_py4j, spark_session


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks MLproject's evaluate command with it."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--input", type=Path, default=settings.dataset, help="a .csv or .xlsx file")
    parser.add_argument(
        "--output", default="", help="also write the results here as JSON ('' = print only)"
    )
    parser.add_argument("--k", type=int, default=0, help="fixed k; 0 = choose by silhouette")
    parser.add_argument("--k-min", type=int, default=DEFAULT_K_RANGE[0])
    parser.add_argument("--k-max", type=int, default=DEFAULT_K_RANGE[1])
    parser.add_argument("--min-cluster-share", type=float, default=DEFAULT_MIN_CLUSTER_SHARE)
    parser.add_argument("--transform", choices=TRANSFORMS, default=DEFAULT_TRANSFORM)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--spark-master", default=settings.spark_master)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(Settings.from_env()).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().addFilter(not_from_py4j)
    if not args.input.is_file():
        print(f"error: {args.input}: no such file", flush=True)
        return 2
    spark = spark_session(args.spark_master)
    try:
        result = evaluate(
            spark,
            args.input,
            k_range=(args.k_min, args.k_max),
            k=args.k or None,
            min_cluster_share=args.min_cluster_share,
            transform=args.transform,
            seed=args.seed,
            max_iter=args.max_iter,
        )
    except (LoadError, ValueError) as error:
        print(f"error: {error}", flush=True)
        return 2
    finally:
        spark.stop()
    print(report(result))
    if args.output:
        write_json(result, Path(args.output))
        print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    cli.run(main)
