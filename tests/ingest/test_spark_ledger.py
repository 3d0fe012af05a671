"""The Spark engine's rule, without Spark or a broker: records staged by the executors' function
(pipelines/ingest/spark_records.py), taken by the driver's ledger
(pipelines/ingest/spark_ledger.py) and merged back into windows from the staged segments,
micro-batch by micro-batch, with restarts anywhere, must cut the windows the kafka-python engine's
WindowBuilder cuts from the same partitions, row for row, and send the same messages to the dead
letters with the same reasons."""

from __future__ import annotations

import random
import tempfile
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest.messages import PoisonMessage, encode_end, encode_invoice
from pipelines.ingest.spark_ledger import Message, ReadyWindow, WindowLedger, messages
from pipelines.ingest.spark_records import stage, window_rows
from pipelines.ingest.window_files import ARROW_SCHEMA, Manifest, rows_digest
from pipelines.ingest.window_rule import ClosedWindow, WindowBuilder, WindowRule

T0 = 1_700_000_000_000
TOPIC = "retail"
PARTITIONS = [0, 1, 2]
DAY_ONE = datetime(2010, 12, 1)
POISON = [b"not json", None, b'{"v": 99}']

Record = tuple[int, int, bytes | None]  # offset, timestamp in ms, value
RULES = [
    WindowRule(),
    WindowRule(rows=7),
    WindowRule("seconds", seconds=0.05),
    WindowRule("event-time", period="day"),
    WindowRule("event-time", period="week", lateness=timedelta(hours=30)),
]


def _topic(rng: random.Random, replays: int = 2, invoices: int = 16) -> dict[int, list[Record]]:
    """Per-partition records: `replays` replays of invoices of 1-3 lines dated out of order,
    poison messages among them, and each replay's end marker in every partition."""
    logs: dict[int, list[Record]] = {p: [] for p in PARTITIONS}

    def send(partition: int, timestamp: int, value: bytes | None) -> None:
        logs[partition].append((len(logs[partition]), timestamp, value))

    for replay in range(replays):
        t0, sizes = T0 + replay * 10**6, [rng.randint(1, 3) for _ in range(invoices)]
        seq = 0
        for number, size in enumerate(sizes):
            date = DAY_ONE + timedelta(hours=rng.randint(0, 24 * 20) + replay * 24 * 30)
            header = [f"{replay}-{number}", str(date), rng.choice(["17850", None]), "France"]
            lines = [
                [f"S{k}", rng.choice(["HEART", None]), rng.randint(-3, 40), 2.5]
                for k in range(size)
            ]
            value = encode_invoice(f"r{replay}", seq, sum(sizes), t0, header, lines)
            send(rng.choice(PARTITIONS), t0 + seq * 10, value)
            if rng.random() < 0.08:
                send(rng.choice(PARTITIONS), t0 + seq * 10, rng.choice(POISON))
            seq += size
        for partition in PARTITIONS:
            send(partition, t0 + seq * 10, encode_end(f"r{replay}", seq, t0))
    return logs


def _builder_windows(logs, rule: WindowRule, spill: Path) -> tuple[list[ClosedWindow], dict]:
    """The kafka-python engine's windows and dead letters, partitions read round-robin."""
    builder = WindowBuilder(PARTITIONS, {p: 0 for p in PARTITIONS}, rule, spill_dir=spill)
    windows, dead = [], {}
    for index in range(max(map(len, logs.values()))):
        for partition in PARTITIONS:
            if index < len(logs[partition]):
                offset, timestamp, value = logs[partition][index]
                try:
                    builder.add(partition, offset, timestamp, value)
                except PoisonMessage as poison:
                    dead[(partition, offset)] = str(poison)
                while closed := builder.pop_closed():
                    windows.append(closed)
    return windows, dead


def _micro_batches(logs, rng: random.Random, start: dict[int, int]) -> list[pa.RecordBatch]:
    """The records from `start` on, in micro-batches of a random share of each partition."""
    cursors, batches = dict(start), []
    while any(cursors[p] < len(logs[p]) for p in PARTITIONS):
        records = []
        for partition in PARTITIONS:
            take = rng.randint(0, 8)
            for offset, timestamp, value in logs[partition][cursors[partition] :][:take]:
                records.append((partition, offset, timestamp, value))
            cursors[partition] = min(len(logs[partition]), cursors[partition] + take)
        columns = list(zip(*records, strict=True)) if records else [[]] * 4
        types = [pa.int32(), pa.int64(), pa.int64(), pa.binary()]
        names = ["partition", "offset", "timestamp_ms", "value"]
        batches.append(
            pa.record_batch([pa.array(c, t) for c, t in zip(columns, types, strict=True)], names)
        )
    return batches


class _Engine:
    """The Spark engine's driver without Spark: stage, take, close, save; crash anywhere."""

    def __init__(self, folder: Path, ledger: WindowLedger, rng: random.Random) -> None:
        self.path, self.rng, self.folder = folder / "ledger.json", rng, folder
        self.staged: dict[int, pa.Table] = {}  # each micro-batch's messages
        self.written: dict[int, tuple[Manifest, pd.DataFrame]] = {}
        self.dead: dict[tuple[int, int], str] = {}
        ledger.save(self.path)

    def run(self, batches: list[pa.RecordBatch], rule: WindowRule, first_batch: int = 0) -> None:
        for batch, records in enumerate(batches, start=first_batch):
            self.staged[batch] = stage(records, rule, self._batch_folder(batch))
            while not self._apply(batch):  # killed: Spark runs the same batch again
                pass

    def _apply(self, batch: int) -> bool:
        """One micro-batch from the saved state; False if the driver 'died' before saving."""
        ledger = WindowLedger.load(self.path)
        if batch <= ledger.batch:
            return True
        for message in messages(self.staged[batch]):
            if (verdict := ledger.take(message, batch)) is not None:
                self.dead.setdefault((message.partition, message.offset), verdict.reason)
        ledger.batch = batch
        while ready := ledger.pop_closed():
            self._write(ready)
            if self.rng.random() < 0.2:
                return False
        ledger.save(self.path)
        return True

    def _batch_folder(self, batch: int) -> Path:
        return self.folder / f"batch-{batch}"

    def _write(self, ready: ReadyWindow) -> None:
        folders = [self._batch_folder(b) for b in ready.batches]
        rows = pa.Table.from_batches(
            list(window_rows(folders, ready.key, ready.excluded)), ARROW_SCHEMA
        ).to_pandas()
        window = (ready.manifest, rows)
        if ready.manifest.window in self.written:  # written before a crash: the very same
            before = self.written[ready.manifest.window]
            assert _what(before[0]) == _what(window[0])
            assert (before[0].offsets, before[0].frontiers) == (
                window[0].offsets,
                window[0].frontiers,
            )
        self.written[ready.manifest.window] = window


def _what(manifest: Manifest) -> tuple:
    """What a window is and holds, whatever the reading order."""
    return (
        manifest.window,
        manifest.replay_started_ms,
        manifest.replay,
        manifest.replay_window,
        manifest.rows,
        manifest.digest,
        manifest.first_invoice_date,
        manifest.last_invoice_date,
        manifest.window_start,
        manifest.window_end,
    )


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32), rule=st.sampled_from(RULES))
def test_micro_batches_and_restarts_cut_the_builders_windows(seed: int, rule: WindowRule):
    rng = random.Random(seed)
    logs = _topic(rng)
    with tempfile.TemporaryDirectory() as folder:
        expected, expected_dead = _builder_windows(logs, rule, Path(folder) / "spill")
        expected_rows = [pa.Table.from_batches(list(w.batches()), ARROW_SCHEMA) for w in expected]
        start = WindowLedger.start(TOPIC, PARTITIONS, rule, {p: 0 for p in PARTITIONS}, None)
        engine = _Engine(Path(folder), start, rng)
        engine.run(_micro_batches(logs, rng, {p: 0 for p in PARTITIONS}), rule)

    assert engine.dead == expected_dead
    written = [engine.written[n] for n in sorted(engine.written)]
    assert len(written) == len(expected) > 0
    windows = zip(written, expected, expected_rows, strict=True)
    for number, ((manifest, rows), closed, closed_rows) in enumerate(windows, 1):
        assert manifest.window == number
        assert manifest.rows == closed.rows == len(rows)
        assert manifest.digest == closed.digest == rows_digest(rows)
        assert (manifest.first_invoice_date, manifest.last_invoice_date) == closed.dates
        pd.testing.assert_frame_equal(rows.reset_index(drop=True), closed_rows.to_pandas())
        if rule.by == "event-time":
            start, end = closed.bounds
            assert (manifest.window_start, manifest.window_end) == (str(start), str(end))
        else:  # rows and seconds: the same offsets too, whatever the reading order
            assert manifest.offsets == closed.offsets


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32), rule=st.sampled_from(RULES))
def test_a_new_checkpoint_resumes_from_any_manifest(seed: int, rule: WindowRule):
    """Delete the engine's work folder after any window: it starts again from that manifest's
    offsets and frontiers, as the kafka-python engine does, and writes the same later windows."""
    rng = random.Random(seed)
    logs = _topic(rng)
    beginnings = {p: 0 for p in PARTITIONS}
    with tempfile.TemporaryDirectory() as folder:
        start = WindowLedger.start(TOPIC, PARTITIONS, rule, beginnings, None)
        first = _Engine(Path(folder) / "first", start, random.Random(0))
        first.run(_micro_batches(logs, rng, beginnings), rule)
        manifests = [first.written[n][0] for n in sorted(first.written)]
        last = rng.choice(manifests)
        resumed = WindowLedger.start(TOPIC, PARTITIONS, rule, beginnings, last)
        again = _Engine(Path(folder) / "again", resumed, random.Random(0))
        again.run(_micro_batches(logs, rng, resumed.positions), rule)

    later = [_what(first.written[n][0]) for n in sorted(first.written) if n > last.window]
    assert [_what(again.written[n][0]) for n in sorted(again.written)] == later


def test_a_checkpoint_refuses_another_rule_or_topic(tmp_path: Path):
    ledger = WindowLedger.start(TOPIC, PARTITIONS, WindowRule(), {p: 0 for p in PARTITIONS}, None)
    ledger.save(tmp_path / "ledger.json")
    saved = WindowLedger.load(tmp_path / "ledger.json")

    saved.check(TOPIC, PARTITIONS, WindowRule())
    with pytest.raises(ValueError, match=r"by rows .* this run asks .* by event time \(week"):
        saved.check(TOPIC, PARTITIONS, WindowRule("event-time", period="week"))
    with pytest.raises(ValueError, match="this run asks topic 'other'"):
        saved.check("other", PARTITIONS, WindowRule())


def _peak_bytes_while_taking(invoices_per_window: int, batch_messages: int = 500) -> int:
    """Peak of Python allocations while the ledger takes three windows of `invoices_per_window`
    invoices (3 lines each) in micro-batches of `batch_messages`, closing them as they pass."""
    rule, beginnings = WindowRule(), {p: 0 for p in PARTITIONS}
    ledger = WindowLedger.start(TOPIC, PARTITIONS, rule, beginnings, None)
    total = 3 * invoices_per_window

    def message(number: int) -> Message:
        partition, offset = number % len(PARTITIONS), number // len(PARTITIONS)
        if number >= total:  # the replay's end marker, once per partition
            return Message(partition, offset, "end", T0, "r")
        window = number // invoices_per_window
        date_us = int((DAY_ONE + timedelta(minutes=number)).timestamp() * 1e6)
        return Message(
            partition, offset, "invoice", T0, "r", window, None, 3, f"{number:016x}", date_us
        )

    closed = []
    tracemalloc.start()
    try:
        for batch, first in enumerate(range(0, total + len(PARTITIONS), batch_messages)):
            last = min(first + batch_messages, total + len(PARTITIONS))
            for number in range(first, last):
                assert ledger.take(message(number), batch) is None
            while (ready := ledger.pop_closed()) is not None:
                closed.append(ready.manifest.rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert closed == [3 * invoices_per_window] * 3
    return peak


def test_the_drivers_state_does_not_grow_with_the_windows_size():
    """The driver keeps counts and a digest per open window, never its rows (they wait on disk,
    staged by the executors): ten times larger windows, the same peak."""
    _peak_bytes_while_taking(500)  # one-time allocations (caches, interned strings)
    small = _peak_bytes_while_taking(1_000)
    large = _peak_bytes_while_taking(10_000)
    assert large < 1.5 * small, f"peak {large:,} B for 10,000-invoice windows, {small:,} for 1,000"
