"""Continuous training: consume the topic and train, track and register each window as it closes.

    python -m pipelines.stream [--topic T] [--bootstrap-servers HOST:PORT] [--windows-dir DIR]
                               [--window-rows N | --window-seconds T |
                                --window-by event-time --window-period day|week|month
                                --allowed-lateness 6h] [--max-windows N]
                               [--min-silhouette S] [--max-center-shift STD]
                               [--mode cumulative|tumbling|sliding] [--span 3] [recipe flags]

One process until stopped (Ctrl-C or SIGTERM: it ends within seconds, saying where; a restart
resumes there). Each window becomes exactly one registered version, tagged with its window and
digest and with the quality gate's verdict; aliases model1..model3 follow the three newest
accepted versions. The service is pipelines/service/, the recipe flags those of pipelines.train.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from pipelines import cli
from pipelines.config import Settings
from pipelines.ingest.window_rule import add_window_arguments, window_rule
from pipelines.service.faults import check_fail_at
from pipelines.service.gate import DEFAULT_MAX_CENTER_SHIFT, DEFAULT_MIN_SILHOUETTE, Gate
from pipelines.service.loop import Service
from pipelines.training.fitting import Spec
from pipelines.training.options import add_recipe_arguments, recipe_choices
from pipelines.training.session import not_from_py4j, spark_session


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks it against MLproject's stream command."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.stream", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--topic", default=settings.kafka_topic)
    parser.add_argument("--bootstrap-servers", default=settings.kafka_bootstrap_servers)
    parser.add_argument("--windows-dir", type=Path, default=settings.windows_dir)
    add_window_arguments(parser)
    parser.add_argument(
        "--max-windows", type=int, default=0, help="stop once window N is handled; 0 = run on"
    )
    parser.add_argument(
        "--min-silhouette",
        type=float,
        default=DEFAULT_MIN_SILHOUETTE,
        help="the gate: a version below this silhouette does not get an alias",
    )
    parser.add_argument(
        "--max-center-shift",
        type=float,
        default=DEFAULT_MAX_CENTER_SHIFT,
        help="the gate: largest centre shift from model3, in standard deviations",
    )
    add_recipe_arguments(parser)
    return parser


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the service as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    cli_parser = parser(settings)
    args = cli_parser.parse_args(argv)
    if args.max_windows < 0:
        cli_parser.error(f"--max-windows must be >= 0, got {args.max_windows}")
    try:
        rule = window_rule(args)
        check_fail_at()
        spec = Spec(**recipe_choices(args))
        gate = Gate.of(spec, args.min_silhouette, args.max_center_shift)
    except ValueError as error:
        cli_parser.error(str(error))
    settings = replace(
        settings, kafka_topic=args.topic, kafka_bootstrap_servers=args.bootstrap_servers
    )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().addFilter(not_from_py4j)
    logging.getLogger("pipelines").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    spark = spark_session(settings.spark_master)
    service = None
    try:
        service = Service(settings, args.windows_dir, spec, gate, spark)
        service.run(rule, args.max_windows)
    except KeyboardInterrupt:
        where = service.where() if service else "before the first window"
        print(f"stream: stopped; {where}", file=sys.stderr, flush=True)
    else:
        print(f"stream: done; {service.where()}", flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    cli.run(main)
