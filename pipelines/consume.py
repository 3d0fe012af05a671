"""Cut the transaction stream into window files, exactly once.

    python -m pipelines.consume [--windows 3] [--window-rows N | --window-seconds T]
    python -m pipelines.consume --window-by event-time --window-period day|week|month \
        [--allowed-lateness 6h]

The window rule is pipelines/ingest/window_rule.py, the consumer pipelines/ingest/consumer.py.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pipelines import cli
from pipelines.config import DEFAULT_WINDOWS, Settings
from pipelines.ingest.consumer import consume
from pipelines.ingest.window_rule import add_window_arguments, window_rule


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
    parser.add_argument("--group", default=settings.kafka_group)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    cli_parser = parser(settings)
    args = cli_parser.parse_args(argv)
    if min(args.windows, args.until_window) < 0:
        cli_parser.error("--windows and --until-window must be >= 0")
    try:
        rule = window_rule(args)
    except ValueError as error:
        cli_parser.error(str(error))
    settings = replace(
        settings,
        kafka_topic=args.topic,
        kafka_bootstrap_servers=args.bootstrap_servers,
        kafka_group=args.group,
    )
    summary = consume(
        settings,
        args.output_dir,
        max_windows=args.windows,
        rule=rule,
        progress=not args.no_progress,
        until_window=args.until_window,
    )
    print(summary)
    return 0


if __name__ == "__main__":
    cli.run(main)
