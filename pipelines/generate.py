"""Write the default dataset: a deterministic copy of the UCI Online Retail file's shape.

    python -m pipelines.generate [--rows N] [--seed S] [--output PATH]

The generator itself is pipelines/data/generator.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines import cli
from pipelines.config import Settings
from pipelines.data.generator import (
    DEFAULT_ROWS,
    DEFAULT_SEED,
    MIN_ROWS,
    generate_dataset,
    segments_path,
    write_files,
)


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks its defaults against MLproject's."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="transaction lines")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--output", type=Path, default=settings.dataset, help="CSV path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    cli_parser = parser(Settings.from_env())
    args = cli_parser.parse_args(argv)
    if args.rows < MIN_ROWS:
        cli_parser.error(f"--rows must be at least {MIN_ROWS}")
    output = args.output

    started = time.perf_counter()
    frame, segments = generate_dataset(args.rows, args.seed)
    write_files(output, frame, segments)
    elapsed = time.perf_counter() - started
    print(
        f"{output}: {len(frame):,} rows, {len(segments):,} customers, "
        f"{frame['InvoiceNo'].nunique():,} invoices in {elapsed:.2f} s "
        f"(segments in {segments_path(output).name})"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
