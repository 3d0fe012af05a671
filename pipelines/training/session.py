"""The one SparkSession of a training, tuned for jobs over a few thousand customers, and bound to
127.0.0.1 when local or on a cluster on this machine (nothing to warn about at start). The Spark
engine of the window consumer (pipelines/ingest/spark_engine.py) starts its session here too.

Also what keeps Ctrl-C quiet and clean around it: py4j's tracebacks filtered from the log, and the
JVM stopped if the session was still starting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from pyspark.sql import SparkSession

LOOPBACK = "127.0.0.1"
# A training is a short-lived JVM running small jobs on a heap of 1 GB:
# - the C2 compiler spent more CPU compiling than its code saved (a third of the job's CPU);
#   the code cache keeps the size it has with C2, or it fills up and compilation stops;
# - the serial collector spent 12-19% less CPU over a whole training than G1, the default,
#   whose concurrent threads compete with the job's on two cores.
LOCAL_DRIVER_OPTIONS = (
    "-XX:TieredStopAtLevel=1",
    "-XX:ReservedCodeCacheSize=240m",
    "-XX:+UseSerialGC",
)
# The classes a training loads, archived by `make install` (pipelines/training/class_archive.py).
CLASS_ARCHIVE = Path(sys.prefix) / "spark-classes.jsa"
# A stale archive (another JDK or other jars) is ignored without a word: it only costs speed.
QUIET_ARCHIVE = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")


def local_driver_options(archive_at_exit: Path | None = None) -> str:
    """The JVM options of a local session: LOCAL_DRIVER_OPTIONS and the class archive, read if
    there is one, or written at exit to `archive_at_exit`."""
    if archive_at_exit is not None:
        archive = [f"-XX:ArchiveClassesAtExit={archive_at_exit}"]
    else:
        archive = [f"-XX:SharedArchiveFile={CLASS_ARCHIVE}"] if CLASS_ARCHIVE.exists() else []
    return " ".join([*LOCAL_DRIVER_OPTIONS, *archive, *QUIET_ARCHIVE])


def spark_session(
    master: str, app: str = "customer-segmentation-train", config: Mapping[str, str] | None = None
) -> SparkSession:
    """The one session for all windows, tuned for jobs over a few thousand customers; `config`
    adds to it (the Spark engine of the consumer: its connector's jars, its Arrow batches)."""
    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # the job shows its own progress
        .config("spark.sql.shuffle.partitions", "4")
        # Adaptive execution re-plans at every shuffle; at this size there is nothing to
        # coalesce or split and the planning was ~15% of the job's CPU.
        .config("spark.sql.adaptive.enabled", "false")
    )
    if master.startswith("local"):
        # Local only: there the driver is also the executor, and no cluster-wide driver options
        # are overridden.
        builder = builder.config("spark.driver.extraJavaOptions", local_driver_options())
    for name, value in (config or {}).items():
        builder = builder.config(name, value)
    if master.startswith("local") or urlparse(master).hostname in (LOOPBACK, "localhost"):
        builder = _bound_to_loopback(builder)
    try:
        return builder.getOrCreate()
    except KeyboardInterrupt:
        _stop_children()
        raise


def _bound_to_loopback(builder: SparkSession.Builder) -> SparkSession.Builder:
    """A local session, or one on a cluster on this machine (`make spark-up`), talks only to
    127.0.0.1: bind its driver there. Left to find an address, Spark warns on every start that
    the hostname resolves to a loopback address and picks another interface, which nothing here
    needs (and a firewall may ask about).
    SPARK_LOCAL_IP reaches the JVM PySpark is about to launch; one set by the user is kept."""
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    return builder.config("spark.driver.host", LOOPBACK).config(
        "spark.driver.bindAddress", LOOPBACK
    )


def _stop_children() -> None:
    """Ctrl-C while PySpark waits for its new JVM leaves that JVM running, orphaned, with 1 GB:
    PySpark removes the directory where the JVM was to write its port, and the JVM never gets to
    the point where it exits with its parent. At that moment the JVM is our only child."""
    for children in Path("/proc/self/task").glob("*/children"):  # Linux; elsewhere none found
        for pid in children.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


def not_from_py4j(record: logging.LogRecord) -> bool:
    """py4j logs to the root logger the errors it then raises: on Ctrl-C, pages of tracebacks."""
    return f"{os.sep}py4j{os.sep}" not in record.pathname
