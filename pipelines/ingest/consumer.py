"""The kafka-python consumer engine: cut the topic into window files, exactly once.

It applies the window rule (pipelines/ingest/window_rule.py). An open window's rows go to its
temporary files as they arrive (pipelines/ingest/spill.py), so memory does not grow with the
window. A closed window is written (Parquet, then manifest, atomically;
pipelines/ingest/window_files.py) and only then are the offsets committed. On (re)start the
consumer seeks to where the last manifest says the next window begins, so a kill at any moment
neither loses nor duplicates a row; the temporary files of windows still open are discarded.
Unusable messages, and invoices that arrive after their event-time window closed, go to the
dead-letter file instead of a window.

Windows are built by one active member of the consumer group, which needs every partition; a
second member is a standby that takes over through the group's rebalance.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from tqdm import tqdm

from pipelines.config import DEFAULT_WINDOWS, Settings
from pipelines.ingest.messages import PoisonMessage
from pipelines.ingest.spill import SpillArea
from pipelines.ingest.window_files import Manifest, manifests_of_topic, write_window_batches
from pipelines.ingest.window_rule import (
    DEFAULT_RULE,
    ClosedWindow,
    LateInvoice,
    WindowBuilder,
    WindowRule,
    frontiers_for_manifest,
    frontiers_of_manifest,
    manifest_key,
)

DEAD_LETTERS = "dead-letters.jsonl"


class DeadLetters:
    """Append-only JSON lines of unusable messages, each recorded once across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seen: set[tuple[str, int, int]] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                self._seen.add((entry["topic"], entry["partition"], entry["offset"]))
        self._file: IO[str] = path.open("a")
        self.count = 0

    def add(
        self, topic: str, partition: int, offset: int, value: bytes | None, reason: str
    ) -> bool:
        """Record a message; False if it was recorded before (a re-read after a restart)."""
        if (topic, partition, offset) in self._seen:
            return False
        self._seen.add((topic, partition, offset))
        text = None if value is None else value.decode("utf-8", errors="replace")
        entry = {"topic": topic, "partition": partition, "offset": offset, "reason": reason}
        self._file.write(json.dumps({**entry, "value": text}) + "\n")
        self._file.flush()
        self.count += 1
        return True

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class _Rebalance(ConsumerRebalanceListener):
    """Pause newly assigned partitions: the poll loop seeks them to where the next window begins
    (kafka-python does not allow blocking calls inside this callback)."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer
        self.assigned: set[TopicPartition] | None = None

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        self.consumer.pause(*assigned)
        self.assigned = set(assigned)


def member_id(output_dir: Path) -> str:
    """The builder's static group membership (KIP-345), one per host and windows folder: the same
    builder restarted after a crash takes its partitions back at once, instead of waiting out the
    dead member's session (45 s); a standby elsewhere is another member, and a second builder on
    the same folder fences the first instead of writing beside it."""
    where = f"{socket.gethostname()}:{output_dir.resolve()}"
    return f"window-builder-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


@dataclass
class ConsumeSummary:
    windows: list[Manifest]
    dead_letters: int
    late_rows: int = 0  # rows of late invoices (event time), among the dead letters

    def __str__(self) -> str:
        rows = sum(m.rows for m in self.windows)
        names = ", ".join(f"window-{m.window}" for m in self.windows) or "none"
        return (
            f"wrote {names} ({rows:,} rows); {self.dead_letters} dead letters "
            f"({self.late_rows:,} late rows)"
        )


def consume(
    settings: Settings,
    output_dir: Path,
    *,
    max_windows: int = DEFAULT_WINDOWS,
    rule: WindowRule = DEFAULT_RULE,
    progress: bool = True,
    until_window: int = 0,
    stop: threading.Event | None = None,
) -> ConsumeSummary:
    """Write windows cut by `rule` until `max_windows` more are written, window `until_window`
    exists or `stop` is set (0, 0 and None = run until interrupted). `stop` is how a service that
    runs the consumer in a thread ends it (pipelines/service/loop.py)."""
    topic = settings.kafka_topic
    manifests = manifests_of_topic(output_dir, topic)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.kafka_group,
        client_id="retail-window-builder",
        group_instance_id=member_id(output_dir),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # What a fetch may bring: the consumer's memory besides its windows' batches. Kafka still
        # returns a larger first batch whole, and 4 MB (~3,500 invoices) keeps the pipe full.
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    partitions = wait_for_partitions(consumer, topic)
    last = manifests[-1] if manifests else None
    spill = SpillArea(output_dir)
    builder = WindowBuilder(
        partitions,
        positions={},
        rule=rule,
        last_closed=(manifest_key(last) if last else None),
        resumed_frontiers=frontiers_of_manifest(last) if last else {},
        spill_dir=spill.folder,
    )
    dead = DeadLetters(output_dir / DEAD_LETTERS)

    def resume(assigned: set[TopicPartition]) -> None:
        positions = _resume_positions(consumer, topic, partitions, last)
        for tp in assigned:
            consumer.seek(tp, positions[tp.partition])
        builder.reset(positions)
        spill.sweep()  # a member that held the partitions before may have died
        consumer.resume(*assigned)
        missing = set(partitions) - {tp.partition for tp in assigned}
        if missing:
            print(
                f"waiting: this member does not hold partitions {sorted(missing)}", file=sys.stderr
            )

    rebalance = _Rebalance(consumer)
    consumer.subscribe([topic], listener=rebalance)
    written: list[Manifest] = []
    late_rows = 0
    next_window = last.window + 1 if last else 1

    def done() -> bool:
        return (
            bool(max_windows and len(written) >= max_windows)
            or bool(until_window and next_window > until_window)
            or bool(stop and stop.is_set())
        )

    bar = tqdm(unit="rows", disable=not progress, desc="consume")
    try:
        while not done():
            try:
                batch = consumer.poll(timeout_ms=500)
                if rebalance.assigned is not None:
                    # Drop what this poll fetched: it is read again from the positions set now.
                    resume(rebalance.assigned)
                    rebalance.assigned = None
                    continue
            except KafkaError as error:
                _wait_for_broker(error)
                continue
            for tp, records in batch.items():
                for record in records:
                    try:
                        rows = builder.add(
                            tp.partition, record.offset, record.timestamp, record.value
                        )
                    except PoisonMessage as poison:
                        new = dead.add(
                            topic, tp.partition, record.offset, record.value, str(poison)
                        )
                        if new and isinstance(poison, LateInvoice):
                            late_rows += poison.rows
                    else:
                        bar.update(rows)
            while not done() and (closed := builder.pop_closed()):
                manifest = _write(closed, next_window, topic, output_dir, dead)
                _commit(consumer, manifest)
                last = manifest
                written.append(manifest)
                next_window += 1
                bar.write(
                    f"window-{manifest.window}: {manifest.rows:,} rows, digest {manifest.digest}"
                )
    finally:
        bar.close()
        builder.close()
        spill.close()
        dead.close()
        consumer.close(autocommit=False)
    return ConsumeSummary(written, dead.count, late_rows)


def _write(
    closed: ClosedWindow, number: int, topic: str, output_dir: Path, dead: DeadLetters
) -> Manifest:
    t0, replay, local = closed.key
    first_date, last_date = closed.dates
    manifest = Manifest(
        window=number,
        topic=topic,
        offsets=closed.offsets,
        rows=closed.rows,
        digest=closed.digest,
        first_invoice_date=first_date,
        last_invoice_date=last_date,
        replay=replay,
        replay_window=int(local),
        replay_started_ms=t0,
    )
    if closed.bounds is not None and closed.frontiers is not None:
        start, end = closed.bounds
        manifest.window_start, manifest.window_end = str(start), str(end)
        manifest.frontiers = frontiers_for_manifest(closed.frontiers)
    dead.sync()
    try:
        return write_window_batches(closed.batches(), output_dir, manifest)
    finally:
        closed.discard()


def _commit(consumer: KafkaConsumer, manifest: Manifest) -> None:
    """Commit the group's offsets to the manifest's. Best effort: the manifest is already
    durable and is what a restart resumes from, so a failed commit loses nothing."""
    offsets = {
        TopicPartition(manifest.topic, p): OffsetAndMetadata(end, manifest.parquet_name, -1)
        for p, (_, end) in manifest.offsets.items()
    }
    try:
        consumer.commit(offsets)
    except KafkaError as error:
        print(
            f"offset commit for window-{manifest.window} failed ({error}); the manifest "
            "holds the offsets and the next commit catches up",
            file=sys.stderr,
        )


def _wait_for_broker(error: KafkaError) -> None:
    """Ride out a broker outage: retriable errors wait a second and try again."""
    if not error.retriable:
        raise error
    print(f"broker unavailable ({error}); retrying", file=sys.stderr)
    time.sleep(1)


def wait_for_partitions(consumer: KafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions, once it exists (the producer may create it after we start)."""
    announced = False
    while not (partitions := consumer.partitions_for_topic(topic)):
        if not announced:
            print(f"waiting for topic {topic!r} to exist", file=sys.stderr)
            announced = True
        consumer.poll(timeout_ms=1000)
        consumer.topics()
    return sorted(partitions)


def _resume_positions(
    consumer: KafkaConsumer, topic: str, partitions: list[int], last: Manifest | None
) -> dict[int, int]:
    """The last manifest decides; partitions it does not name start at the group's commit or
    the beginning of the log."""
    positions = dict((p, end) for p, (_, end) in last.offsets.items()) if last else {}
    unknown = [TopicPartition(topic, p) for p in partitions if p not in positions]
    beginnings = consumer.beginning_offsets(unknown) if unknown else {}
    for tp in unknown:
        committed = consumer.committed(tp)
        positions[tp.partition] = committed if committed is not None else beginnings[tp]
    return positions
