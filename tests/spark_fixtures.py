"""Helpers for the training tests and the benchmark: a small Spark session and generated windows.

Windows are made the way the consumer leaves them, without Kafka: a generated dataset cut into
consecutive thirds, each written with `write_window` and a plausible manifest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from pipelines.config import DEFAULT_WINDOWS
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import Manifest, rows_digest, write_window
from pipelines.training.session import spark_session

TOPIC = "retail-transactions"
PARTITIONS = 2


def local_spark() -> SparkSession:
    """The training job's session on two cores: the machine is shared."""
    return spark_session("local[2]")


def write_generated_windows(
    windows_dir: Path, rows: int, seed: int = 7, windows: int = DEFAULT_WINDOWS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate `rows` transactions, write them as `windows` consecutive windows.

    Returns the transactions and the generator's true segment of every customer.
    """
    frame, segments = generate_dataset(rows, seed)
    bounds = [len(frame) * i // windows for i in range(windows + 1)]
    next_offset = dict.fromkeys(range(PARTITIONS), 0)
    for window in range(1, windows + 1):
        part = frame.iloc[bounds[window - 1] : bounds[window]]
        offsets = {}
        for partition in range(PARTITIONS):  # as if keyed round-robin over the partitions
            start = next_offset[partition]
            next_offset[partition] += len(part[partition::PARTITIONS])
            offsets[partition] = [start, next_offset[partition]]
        manifest = Manifest(
            window=window,
            topic=TOPIC,
            offsets=offsets,
            rows=len(part),
            digest=rows_digest(part),
            first_invoice_date=str(part["InvoiceDate"].min()),
            last_invoice_date=str(part["InvoiceDate"].max()),
            replay=f"generated-{rows}-{seed}",
        )
        write_window(part, windows_dir, manifest)
    return frame, segments


def tracking_uri(root: Path) -> str:
    """A SQLite store under `root`; training keeps its artifacts beside the file."""
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db"
