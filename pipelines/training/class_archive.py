"""The JVM classes a training loads, archived once so that every later local Spark session maps
them instead of loading and verifying them again (class data sharing, `-XX:SharedArchiveFile`).

    python -m pipelines.training.class_archive     # `make install` runs it

On the 2-core development machine, a training of three full-size windows took 98-105 s of CPU
with the archive against 129-137 s without it (and the serial collector, session.py), and its
session started in 10 s instead of 16. Every Spark process pays that start: a training, the
stream service, an evaluation, each `mlflow run` step that trains.

The archive is written by a JVM that ran a small training when it exits
(`-XX:ArchiveClassesAtExit`); it is valid for this JDK and these Spark jars only. It lives next to
this environment's Python (CLASS_ARCHIVE), so a new environment starts without one, and a JVM
that finds it stale (another JDK, other jars) ignores it and loads its classes as usual.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pyspark import SparkContext

from pipelines.config import Settings, sqlite_tracking_uri
from pipelines.data.generator import generate_dataset
from pipelines.ingest.window_files import write_windows
from pipelines.train import train_windows
from pipelines.training.session import CLASS_ARCHIVE, local_driver_options, spark_session

ROWS = 6_000  # three windows of a few dozen customers each: every stage of a training runs
# One window and two k load the classes three windows and six k load (the same stages, jobs and
# writers): the archive took 79 s to make instead of 108.
WINDOWS = 1
K_RANGE = (3, 4)
EXIT_TIMEOUT = 300.0  # seconds for the JVM to write the archive as it exits


def archive_classes(archive: Path = CLASS_ARCHIVE) -> Path:
    """Run a small training (read, clean, fit, score, log and register a model) in a JVM that
    archives its classes as it exits; wait for it to exit, then put the archive in place."""
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="class-archive-") as work:
        root = Path(work)
        write_windows(generate_dataset(ROWS)[0], root / "windows", replay="class-archive")
        settings = replace(Settings(), mlflow_tracking_uri=sqlite_tracking_uri(root / "store"))
        options = local_driver_options(archive_at_exit=partial)
        spark = spark_session("local[2]", config={"spark.driver.extraJavaOptions": options})
        train_windows(root / "windows", WINDOWS, settings, spark, k_range=K_RANGE)
        jvm = SparkContext._gateway.proc  # type: ignore[union-attr]  # the JVM, which exits...
        spark.stop()
        jvm.stdin.close()  # ...when its parent's end of this pipe closes
        jvm.wait(timeout=EXIT_TIMEOUT)
    if not partial.exists():
        raise RuntimeError(f"the JVM exited without writing {partial}")
    partial.rename(archive)
    return archive


def main() -> int:
    started = time.perf_counter()
    archive = archive_classes()
    size = archive.stat().st_size / 1e6
    print(f"class archive: {archive} ({size:.0f} MB) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
