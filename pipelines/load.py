"""Check a copy of the Online Retail file: rows, customers, invoices and malformed lines.

    python -m pipelines.load PATH   # a .csv or .xlsx file, a directory of them, or a glob

The loader itself is pipelines/data/load.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines import cli
from pipelines.data.load import LoadError, load_transactions, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "path",
        type=Path,
        help="a .csv or .xlsx Online Retail file, a directory of them or a glob (name order)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        result = load_transactions(args.path)
    except (FileNotFoundError, LoadError) as error:
        parser.exit(2, f"error: {error}\n")
    print(summary(result))
    print(f"loaded in {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    cli.run(main)
