"""Cut the transaction stream into window files, exactly once.

    python -m pipelines.consume [--windows 3] [--window-rows N | --window-seconds T]
    python -m pipelines.consume --window-by event-time --window-period day|week|month \
        [--allowed-lateness 6h]
    python -m pipelines.consume --engine spark [--batch-messages 100000] ...

The window rule is pipelines/ingest/window_rule.py; the engines that apply it are
pipelines/ingest/consumer.py (kafka-python, the default) and pipelines/ingest/spark_engine.py
(Spark Structured Streaming, on SPARK_MASTER).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from pipelines import cli
from pipelines.config import DEFAULT_BATCH_MESSAGES, DEFAULT_WINDOWS, Settings
from pipelines.ingest.consumer import ConsumeSummary, consume
from pipelines.ingest.window_rule import add_window_arguments, window_rule

ENGINES = ("kafka-python", "spark")  # the first is the default


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks its defaults against MLproject's."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.consume", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=DEFAULT_WINDOWS,
        help="stop after writing N windows; 0 = run on",
    )
    parser.add_argument(
        "--until-window", type=int, default=0, help="stop once window-K exists (for restarts)"
    )
    add_window_arguments(parser)
    parser.add_argument("--output-dir", type=Path, default=settings.windows_dir)
    parser.add_argument("--topic", default=settings.kafka_topic)
    parser.add_argument("--bootstrap-servers", default=settings.kafka_bootstrap_servers)
    parser.add_argument(
        "--group", help=f"kafka-python engine: the consumer group (default {settings.kafka_group})"
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=ENGINES[0],
        help="kafka-python: one process; spark: Spark Structured Streaming on SPARK_MASTER",
    )
    parser.add_argument(
        "--batch-messages",
        type=int,
        help=f"spark engine: Kafka messages per micro-batch (default {DEFAULT_BATCH_MESSAGES})",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _check_engine_flags(args: argparse.Namespace) -> None:
    """ValueError naming a flag the chosen engine has no use for."""
    if args.engine == "spark" and args.group is not None:
        raise ValueError(
            "--group is for the kafka-python engine: the Spark engine keeps its offsets in its "
            "checkpoint, under --output-dir"
        )
    if args.engine != "spark" and args.batch_messages is not None:
        raise ValueError("--batch-messages is for --engine spark")
    if args.batch_messages is not None and args.batch_messages < 1:
        raise ValueError("--batch-messages must be >= 1")


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    cli_parser = parser(settings)
    args = cli_parser.parse_args(argv)
    if min(args.windows, args.until_window) < 0:
        cli_parser.error("--windows and --until-window must be >= 0")
    try:
        rule = window_rule(args)
        _check_engine_flags(args)
    except ValueError as error:
        cli_parser.error(str(error))
    settings = replace(
        settings,
        kafka_topic=args.topic,
        kafka_bootstrap_servers=args.bootstrap_servers,
        kafka_group=args.group or settings.kafka_group,
    )
    options = {
        "max_windows": args.windows,
        "rule": rule,
        "progress": not args.no_progress,
        "until_window": args.until_window,
    }
    if args.engine == "kafka-python":
        summary = consume(settings, args.output_dir, **options)
    else:
        summary = _consume_with_spark(settings, args, options)
        if summary is None:
            return 1
    print(summary)
    return 0


def _consume_with_spark(
    settings: Settings, args: argparse.Namespace, options: dict
) -> ConsumeSummary | None:
    """The Spark engine, imported only when asked for (it loads pyspark); None after an error
    the user must fix, which it prints."""
    from pipelines.ingest.spark_engine import EngineError, consume_with_spark
    from pipelines.training.session import not_from_py4j

    logging.getLogger().addFilter(not_from_py4j)  # no pages of py4j tracebacks after Ctrl-C
    batch = args.batch_messages or DEFAULT_BATCH_MESSAGES
    try:
        return consume_with_spark(settings, args.output_dir, batch_messages=batch, **options)
    except EngineError as error:
        print(f"consume: error: {error}", file=sys.stderr)
        return None


if __name__ == "__main__":
    cli.run(main)
