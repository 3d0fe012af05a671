"""Replay a dataset file into Kafka, one invoice per message, in file order.

    python -m pipelines.produce --input data/online_retail.csv [--rate ROWS_PER_S] [--limit ROWS]
    python -m pipelines.produce --input data/online_retail.csv --speedup 60000  # a year in ~9 min
    python -m pipelines.produce --input 'data/by-day/*.csv'   # or a directory: name order

The producer itself is pipelines/ingest/producer.py.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pipelines import cli
from pipelines.config import Settings
from pipelines.data.load import LoadError, input_files
from pipelines.ingest.producer import replay


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks its defaults against MLproject's."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.produce", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--input",
        type=Path,
        default=settings.dataset,
        help="a .csv or .xlsx file, a directory of them or a glob, read in name order",
    )
    parser.add_argument("--topic", default=settings.kafka_topic)
    parser.add_argument("--bootstrap-servers", default=settings.kafka_bootstrap_servers)
    parser.add_argument("--rate", type=float, default=0.0, help="rows/s; 0 = as fast as possible")
    parser.add_argument(
        "--speedup",
        type=float,
        default=0.0,
        help="replay by InvoiceDate, X times faster than it happened; 0 = off",
    )
    parser.add_argument("--limit", type=int, default=0, help="replay only the first N rows")
    parser.add_argument("--partitions", type=int, default=3, help="when creating the topic")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    cli_parser = parser(settings)
    args = cli_parser.parse_args(argv)
    if min(args.rate, args.speedup, args.limit) < 0 or args.partitions < 1:
        cli_parser.error("--rate, --speedup and --limit must be >= 0 and --partitions >= 1")
    if args.rate and args.speedup:
        cli_parser.error("choose one of --rate and --speedup")
    try:
        input_files(args.input)  # a file, a directory of them or a glob: one at least
    except FileNotFoundError as error:
        cli_parser.error(f"--input: {error} (generate one: python -m pipelines.generate)")
    settings = replace(
        settings, kafka_topic=args.topic, kafka_bootstrap_servers=args.bootstrap_servers
    )
    try:
        summary = replay(
            args.input,
            settings,
            args.rate,
            args.limit,
            args.partitions,
            not args.no_progress,
            speedup=args.speedup,
        )
    except LoadError as error:  # not this schema's header: one line, not a traceback
        cli_parser.exit(2, f"error: {error}\n")
    print(summary)
    return 0


if __name__ == "__main__":
    cli.run(main)
