"""The Spark engine of the window consumer: Spark Structured Streaming reads the topic, every
partition in parallel, and writes the window files and manifests the kafka-python engine
(pipelines/ingest/consumer.py) writes, cut by the same rule, exactly once through Spark's
checkpoint. It runs on SPARK_MASTER.

Each micro-batch (`foreachBatch`, at most `batch_messages` records):
1. the executors decode its records and stage every invoice line, by window, as sorted segment
   files in the work folder (pipelines/ingest/spark_records.py). A window's rows wait there, on
   disk, until it closes: the driver's memory does not grow with a window's size;
2. the driver collects one small row per message and applies the window rule to them
   (pipelines/ingest/spark_ledger.py): dead letters, frontiers, which windows close;
3. the driver merges each closed window's segments into the kafka-python engine's row order (the
   replay's), a segment per partition at a time, and streams them through the kafka-python
   engine's writer (`write_window_batches`, pipelines/ingest/window_files.py): the same bytes,
   then the manifest;
4. the rule's state is saved, and the staged batches no open window needs are deleted.

Exactly once: Spark logs a micro-batch's offsets in its checkpoint before running it and marks it
done after, so a driver killed in between runs the same batch again on the same records. Each step
is idempotent: a batch the saved state already holds is skipped, a batch run again is staged
afresh, and a window whose manifest is on disk with the same rows is not written again.

The work folder is `<output-dir>/.spark-engine/`: `checkpoint/` (Spark's), `ledger.json` (the
rule's state), `pending/batch-<id>/` (staged rows). Deleting it
makes the next run start again from the last manifest, as the kafka-python engine does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyspark
from kafka import KafkaConsumer, TopicPartition
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from tqdm import tqdm

from pipelines.config import (
    DEFAULT_BATCH_MESSAGES,
    DEFAULT_WINDOWS,
    SPARK_KAFKA_CONNECTOR,
    SPARK_KAFKA_JARS,
    Settings,
)
from pipelines.ingest.consumer import DEAD_LETTERS, ConsumeSummary, DeadLetters, wait_for_partitions
from pipelines.ingest.spark_ledger import Message, ReadyWindow, Rejected, WindowLedger, messages
from pipelines.ingest.spark_records import MESSAGES, stage_records, window_rows
from pipelines.ingest.window_files import (
    Manifest,
    manifest_path,
    manifests_of_topic,
    write_window_batches,
)
from pipelines.ingest.window_rule import DEFAULT_RULE, WindowRule
from pipelines.training.session import spark_session

# Records per Arrow batch handed to a Python worker (~21 rows each): bounds the worker's memory.
ARROW_RECORDS = 2_000
# Each micro-batch is cut into this many tasks per core (Kafka partitions split by offset range):
# the topic's partitions are seldom a multiple of the cores, and equal shares keep every core busy
# to the end of the batch (3 partitions on 2 cores: a quarter less time per batch).
TASKS_PER_CORE = 3
IDLE_SECONDS = 1.0  # how long to wait before looking for new records once the topic is drained
WORK_DIR = ".spark-engine"


class EngineError(RuntimeError):
    """Something to fix before the Spark engine can run; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class WorkDir:
    """The engine's own folder under the output dir (see the module's docstring)."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.json"

    @property
    def pending(self) -> Path:
        return self.root / "pending"

    def staged(self, batch: int) -> Path:
        return self.pending / f"batch-{batch}"

    def is_fresh(self) -> bool:
        """Whether Spark's checkpoint has no micro-batch yet: the stream starts from the ledger's
        positions, else from where the checkpoint says."""
        offsets = self.checkpoint / "offsets"
        return not offsets.is_dir() or not any(p.name.isdigit() for p in offsets.iterdir())


def connector_jars() -> list[Path]:
    """The Kafka connector's jars `make install` fetched; EngineError if they are missing or are
    not pyspark's version (the connector uses Spark's internals: the versions must be equal)."""
    connectors = sorted(SPARK_KAFKA_JARS.glob(SPARK_KAFKA_CONNECTOR))
    if not connectors:
        raise EngineError(
            f"Spark's Kafka connector is not in {SPARK_KAFKA_JARS}: `make install` fetches it "
            "through Maven (or run `python -m infra.spark_kafka`)"
        )
    versions = {jar.name.removesuffix(".jar").rsplit("-", 1)[1] for jar in connectors}
    if versions != {pyspark.__version__}:
        raise EngineError(
            f"Spark's Kafka connector in {SPARK_KAFKA_JARS} is {', '.join(sorted(versions))} and "
            f"pyspark is {pyspark.__version__}: they must be the same version. Run `make install`"
        )
    return sorted(SPARK_KAFKA_JARS.glob("*.jar"))


def consume_with_spark(
    settings: Settings,
    output_dir: Path,
    *,
    max_windows: int = DEFAULT_WINDOWS,
    rule: WindowRule = DEFAULT_RULE,
    progress: bool = True,
    until_window: int = 0,
    stop: threading.Event | None = None,
    batch_messages: int = DEFAULT_BATCH_MESSAGES,
) -> ConsumeSummary:
    """Write windows cut by `rule` until `max_windows` more are written, window `until_window`
    exists or `stop` is set (0, 0 and None = run until interrupted), as `consume` does."""
    topic, output_dir = settings.kafka_topic, output_dir.resolve()  # executors have another cwd
    manifests = manifests_of_topic(output_dir, topic)
    if until_window and manifests and manifests[-1].window >= until_window:
        return ConsumeSummary([], 0)
    jars = connector_jars()
    partitions, beginnings = _partitions(settings)
    work = WorkDir(output_dir / WORK_DIR)
    ledger = _ledger(
        work, topic, partitions, rule, beginnings, manifests[-1] if manifests else None
    )
    # The executors' Python is this one (its packages, this project), unless the user chose one.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    config = {
        "spark.jars": ",".join(map(str, jars)),
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_RECORDS),
    }
    spark = spark_session(settings.spark_master, "customer-segmentation-windows", config)
    limits = (max_windows, until_window)
    run = _Run(spark, settings, work, output_dir, ledger, limits, stop, progress)
    try:
        run.catch_up()
        while not run.done():
            run.stream(partitions, ledger.positions, batch_messages)
    finally:
        run.close()
        spark.stop()
    return ConsumeSummary(run.written, run.dead.count, run.late_rows)


def _partitions(settings: Settings) -> tuple[list[int], dict[int, int]]:
    """The topic's partitions, once it exists, and where each begins."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, client_id="retail-window-builder"
    )
    try:
        partitions = wait_for_partitions(consumer, settings.kafka_topic)
        tps = [TopicPartition(settings.kafka_topic, p) for p in partitions]
        beginnings = {
            tp.partition: offset for tp, offset in consumer.beginning_offsets(tps).items()
        }
    finally:
        consumer.close()
    return partitions, beginnings


def _values(settings: Settings, places: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The values of the records at `places` (partition, offset), read from Kafka: the late and
    already-written invoices a batch sends to the dead letters, few by nature."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="retail-window-builder",
        enable_auto_commit=False,
        max_poll_records=1,
    )
    values = {}
    try:
        for partition, offset in sorted(places):
            tp = TopicPartition(settings.kafka_topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            while (partition, offset) not in values:
                for record in consumer.poll(timeout_ms=1000).get(tp, []):
                    values[(partition, record.offset)] = record.value
    finally:
        consumer.close()
    return values


def _ledger(
    work: WorkDir,
    topic: str,
    partitions: list[int],
    rule: WindowRule,
    beginnings: dict[int, int],
    last: Manifest | None,
) -> WindowLedger:
    """The saved state of a checkpoint that has run, or a new one from the last manifest."""
    if work.is_fresh():
        shutil.rmtree(work.root, ignore_errors=True)
        work.pending.mkdir(parents=True)
        ledger = WindowLedger.start(topic, partitions, rule, beginnings, last)
        ledger.save(work.ledger)
        return ledger
    if not work.ledger.is_file():
        raise EngineError(
            f"{work.checkpoint} has no {work.ledger.name} beside it; delete {work.root} to start "
            "again from the last window written"
        )
    ledger = WindowLedger.load(work.ledger)
    try:
        ledger.check(topic, partitions, rule)
    except ValueError as error:
        raise EngineError(f"{error} (or delete {work.root})") from None
    return ledger


class _Run:
    """One run of the engine: the micro-batch function and what it has written so far."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        work: WorkDir,
        output_dir: Path,
        ledger: WindowLedger,
        limits: tuple[int, int],
        stop: threading.Event | None,
        progress: bool,
    ) -> None:
        self.spark, self.settings, self.work, self.output_dir = spark, settings, work, output_dir
        self.topic, self.rule, self.next_window = ledger.topic, ledger.rule, ledger.next_window
        self.limits, self.stop = limits, stop  # (max_windows, until_window), as `consume`'s
        self.messages_schema = from_arrow_schema(MESSAGES, prefer_timestamp_ntz=True)
        self.dead = DeadLetters(output_dir / DEAD_LETTERS)
        self.written: list[Manifest] = []
        self.late_rows = 0
        self.batches = 0
        self.bar = tqdm(unit="rows", disable=not progress, desc="consume")

    def done(self) -> bool:
        max_windows, until_window = self.limits
        return (
            bool(max_windows and len(self.written) >= max_windows)
            or bool(until_window and self.next_window > until_window)
            or bool(self.stop and self.stop.is_set())
        )

    def catch_up(self) -> None:
        """Write the windows the saved state holds closed but a limit left unwritten."""
        ledger = WindowLedger.load(self.work.ledger)
        self._close_windows(ledger)
        self._save(ledger)

    def stream(self, partitions: list[int], start: dict[int, int], batch: int) -> None:
        """Process every record the topic holds now, in micro-batches; wait a moment if there
        were none. (Spark's available-now trigger ends the query once it has caught up, so a
        stop never cuts a micro-batch short.)"""
        topic = self.topic
        records = (
            self.spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", self.settings.kafka_bootstrap_servers)
            .option("assign", json.dumps({topic: partitions}))
            # Only read on the checkpoint's first micro-batch: afterwards it says where.
            .option("startingOffsets", json.dumps({topic: {str(p): o for p, o in start.items()}}))
            .option("maxOffsetsPerTrigger", batch)
            .option("minPartitions", self.spark.sparkContext.defaultParallelism * TASKS_PER_CORE)
            .load()
            .select(
                "partition", "offset", F.unix_millis("timestamp").alias("timestamp_ms"), "value"
            )
        )
        before = self.batches
        query = (
            records.writeStream.foreachBatch(self.on_batch)
            .option("checkpointLocation", str(self.work.checkpoint))
            .trigger(availableNow=True)
            .start()
        )
        try:
            query.awaitTermination()
        finally:
            query.stop()
        if self.batches == before and not self.done():
            if self.stop is not None:
                self.stop.wait(IDLE_SECONDS)
            else:
                time.sleep(IDLE_SECONDS)

    def on_batch(self, records: DataFrame, batch: int) -> None:
        """One micro-batch, from staging its rows to saving the rule's state."""
        ledger = WindowLedger.load(self.work.ledger)
        if batch <= ledger.batch:
            return  # run again after a crash, but its effects were saved already
        staged = self.work.staged(batch)
        shutil.rmtree(staged, ignore_errors=True)  # from a run of this batch cut short
        stage = partial(stage_records, rule=self.rule, folder=str(staged))
        described = records.mapInArrow(stage, self.messages_schema).toArrow()
        rows, rejected = 0, []
        for message in messages(described):
            verdict = ledger.take(message, batch)
            if verdict is None:
                rows += message.rows
            else:
                rejected.append((message, verdict))
        self._dead_letters(rejected)
        ledger.batch = batch
        self._close_windows(ledger)
        self._save(ledger)
        self.batches += 1
        self.bar.update(rows)

    def _dead_letters(self, rejected: list[tuple[Message, Rejected]]) -> None:
        """Record the batch's dead letters, each once across restarts. A rejected invoice's value
        is read again from Kafka (`_values`): the staged rows do not keep it."""
        invoices = [(m.partition, m.offset) for m, _ in rejected if m.kind != "poison"]
        values = _values(self.settings, invoices) if invoices else {}
        for message, verdict in rejected:
            place = (message.partition, message.offset)
            value = message.value if message.kind == "poison" else values[place]
            if self.dead.add(self.topic, *place, value, verdict.reason):
                self.late_rows += verdict.late_rows

    def _close_windows(self, ledger: WindowLedger) -> None:
        while not self.done() and (ready := ledger.pop_closed()):
            self._write(ready)
            self.next_window = ready.manifest.window + 1

    def _write(self, ready: ReadyWindow) -> None:
        """Write a closed window's rows as one Parquet file, then its manifest."""
        manifest = ready.manifest
        on_disk = manifest_path(self.output_dir, manifest.window)
        if on_disk.exists():
            self._check_same(Manifest.from_json(on_disk.read_text()), manifest)
            return  # written before the driver died, after the state was last saved
        self.dead.sync()
        staged = [self.work.staged(b) for b in ready.batches]
        rows = window_rows(staged, ready.key, ready.excluded)
        write_window_batches(_checked(rows, manifest), self.output_dir, manifest)
        self.written.append(manifest)
        self.bar.write(
            f"window-{manifest.window}: {manifest.rows:,} rows, digest {manifest.digest}"
        )

    def _check_same(self, on_disk: Manifest, manifest: Manifest) -> None:
        def identity(m: Manifest) -> tuple:
            return (m.replay_started_ms, m.replay, m.replay_window, m.rows, m.digest)

        if identity(on_disk) != identity(manifest):
            path = manifest_path(self.output_dir, manifest.window)
            raise EngineError(
                f"{path} holds other rows than the window this checkpoint cuts there "
                f"({on_disk.rows:,} rows, digest {on_disk.digest}, against {manifest.rows:,} and "
                f"{manifest.digest}): use another --output-dir, or delete {self.work.root} to "
                "go on from the windows on disk"
            )

    def _save(self, ledger: WindowLedger) -> None:
        """Save the state, then delete the staged batches no open window needs any more."""
        self.dead.sync()
        ledger.save(self.work.ledger)
        needed = {b for window in ledger.open.values() for b in window.batches}
        for staged in self.work.pending.glob("batch-*"):
            batch = int(staged.name.removeprefix("batch-"))
            if batch <= ledger.batch and batch not in needed:
                shutil.rmtree(staged)

    def close(self) -> None:
        self.bar.close()
        self.dead.close()


def _checked(batches: Iterator[pa.RecordBatch], manifest: Manifest) -> Iterator[pa.RecordBatch]:
    """`batches`, failing before the manifest is written if they are not the rows it counts."""
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        yield batch
    if rows != manifest.rows:
        raise RuntimeError(
            f"window-{manifest.window}: its staged segments hold {rows:,} rows where the "
            f"messages held {manifest.rows:,}"
        )
