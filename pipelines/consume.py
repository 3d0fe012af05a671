"""Cut the transaction stream into window files, exactly once.

    python -m pipelines.consume [--windows 3] [--window-rows N | --window-seconds T]

The window rule is pipelines/ingest/window_rule.py, the consumer pipelines/ingest/consumer.py.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pipelines import cli
from pipelines.config import DEFAULT_WINDOWS, Settings
from pipelines.ingest.consumer import consume


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
    parser.add_argument("--window-rows", type=int, default=0, help="0 = a third of the replay")
    parser.add_argument("--window-seconds", type=float, default=0.0, help="cut by time instead")
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
    if min(args.windows, args.until_window, args.window_rows, args.window_seconds) < 0:
        cli_parser.error(
            "--windows, --until-window, --window-rows and --window-seconds must be >= 0"
        )
    if args.window_rows and args.window_seconds:
        cli_parser.error("choose one of --window-rows and --window-seconds")
    settings = replace(
        settings,
        kafka_topic=args.topic,
        kafka_bootstrap_servers=args.bootstrap_servers,
        kafka_group=args.group,
    )
    summary = consume(
        settings,
        args.output_dir,
        args.windows,
        args.window_rows,
        args.window_seconds,
        not args.no_progress,
        args.until_window,
    )
    print(summary)
    return 0


if __name__ == "__main__":
    cli.run(main)
