"""The Spark engine's executor side: Kafka records in, window rows on disk, message metadata out.

Runs inside Spark's Python workers (`mapInArrow`), one Arrow batch of records at a time, so that
every partition of the topic is decoded in parallel. It decodes each record with the consumer's
own `decode` (pipelines/ingest/messages.py), puts each invoice in its window with the rule's own
`WindowRule.key` and builds its rows with `invoices_batch` (pipelines/ingest/spill.py), as the
kafka-python engine does. Then:

- the invoice lines go straight to disk, written by the worker itself as segment files in the
  kafka-python engine's spill format (pipelines/ingest/spill.py), one per window and partition
  of the batch, sorted by seq, under `<staged folder>/<window folder>/`. They wait there until
  their window closes; the driver then merges them into the replay's order (`window_rows`). Rows
  never pass back through the JVM: converting them to Spark rows and writing them as Parquet, to
  sort them in Spark later, cost most of the engine's time;
- one row per message comes back to Spark (`MESSAGES`): its kind, window, row count, digest (the
  sum of its rows' hashes, pipelines/ingest/window_files.py), event time, and for a poison message
  the reason and the value. Only these go to the driver, which applies the rest of the rule to
  them (pipelines/ingest/spark_ledger.py).

A micro-batch run again (after a crash) writes the same files under the same names: a segment is
named by its partition and first offset, and written to a temporary name then renamed.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from pipelines.ingest.messages import EndOfReplay, Invoice, PoisonMessage, decode
from pipelines.ingest.spill import SEQ, invoices_batch, merge_runs, write_segment
from pipelines.ingest.window_files import ARROW_SCHEMA, digest_text, row_hashes
from pipelines.ingest.window_rule import WindowKey, WindowRule, event_ms

# The records the Kafka source gives, as the engine selects them (timestamp in epoch ms).
RECORD_COLUMNS = ("partition", "offset", "timestamp_ms", "value")
# A message's own row, one per Kafka record, and the only one that goes back through Spark.
MESSAGES = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kind", pa.string()),  # invoice, end or poison
        ("t0", pa.int64()),  # the replay: its start and id
        ("replay", pa.string()),
        ("window", pa.int64()),  # the window's index within its replay (invoices only)
        ("seq", pa.int64()),  # the invoice's first line in the replay: the window's row order
        ("event_ms", pa.int64()),  # event time only: InvoiceDate in epoch ms
        ("rows", pa.int64()),  # the invoice's lines
        ("digest", pa.string()),  # the sum of their hashes
        ("reason", pa.string()),  # poison: why
        ("value", pa.binary()),  # poison: the record's value, for the dead letters
        ARROW_SCHEMA.field("InvoiceDate"),  # invoices: their date
    ]
)
# What `stage` builds a message's row from; the date comes from the invoice's rows.
MESSAGE_FIELDS = tuple(MESSAGES.names[:-1])
# Beside each staged line: its message's place, so that a late invoice's lines can be left out.
PARTITION, OFFSET = "_partition", "_offset"


class Segment(NamedTuple):
    """A staged segment file, named for what the merge needs without opening it: the partition
    and first offset of its records, and the seqs of its first and last rows."""

    partition: int
    offset: int
    low: int
    high: int

    @property
    def name(self) -> str:
        return f"p{self.partition}-o{self.offset}-s{self.low}-{self.high}.arrow"

    @classmethod
    def of(cls, path: Path) -> Segment:
        partition, offset, seqs = path.stem.split("-", 2)
        low, high = seqs.removeprefix("s").split("-")
        return cls(int(partition[1:]), int(offset[1:]), int(low), int(high))


def window_folder(key: WindowKey) -> str:
    """The folder name of a window's segments within a staged batch: the replay id is any
    string a producer sent, so it is hashed rather than put in a path."""
    t0, replay, index = key
    return f"{t0}-{int(index)}-{hashlib.sha256(replay.encode()).hexdigest()[:16]}"


def stage_records(
    batches: Iterator[pa.RecordBatch], rule: WindowRule, folder: str
) -> Iterator[pa.RecordBatch]:
    """`mapInArrow`'s function: each batch of records staged under `folder`, its MESSAGES out."""
    for batch in batches:
        yield from stage(batch, rule, Path(folder)).to_batches()


def stage(batch: pa.RecordBatch, rule: WindowRule, folder: Path) -> pa.Table:
    """Write every invoice line of one batch of records (RECORD_COLUMNS) under `folder`, one
    segment per window and partition; return one MESSAGES row per message."""
    invoices: list[Invoice] = []
    places: list[tuple[int, int, int]] = []  # each invoice's partition, offset and window
    others: list[tuple] = []  # end markers and poison messages, as MESSAGE_FIELDS
    records = (batch.column(name).to_pylist() for name in RECORD_COLUMNS)
    for partition, offset, timestamp_ms, value in zip(*records, strict=True):
        try:
            message = decode(value)
        except PoisonMessage as poison:
            others.append((partition, offset, "poison", *[None] * 5, 0, None, str(poison), value))
            continue
        if isinstance(message, EndOfReplay):
            end = (message.t0, message.replay, *[None] * 3, 0, None, None, None)
            others.append((partition, offset, "end", *end))
            continue
        invoices.append(message)
        places.append((partition, offset, rule.key(message, timestamp_ms)[2]))

    rows = pa.Table.from_batches([invoices_batch(invoices)])
    lengths = np.fromiter(map(len, invoices), dtype=np.int64, count=len(invoices))
    firsts = np.cumsum(lengths) - lengths
    sums = np.add.reduceat(row_hashes(rows.drop_columns([SEQ])), firsts) if invoices else []
    by_event_time = rule.by == "event-time"
    described = [
        (partition, offset, "invoice", invoice.t0, invoice.replay, window, invoice.seq)
        + (event_ms(invoice.header[1]) if by_event_time else None, len(invoice))
        + (digest_text(int(total)), None, None)
        for (partition, offset, window), invoice, total in zip(places, invoices, sums, strict=True)
    ]
    _write_segments(rows, lengths, invoices, places, folder)
    dates = rows["InvoiceDate"].take(pa.array(firsts, type=pa.int64()))
    return pa.concat_tables(
        [_messages(described, dates), _messages(others, pa.nulls(len(others), pa.timestamp("us")))]
    )


def _write_segments(
    rows: pa.Table,
    lengths: np.ndarray,
    invoices: list[Invoice],
    places: list[tuple[int, int, int]],
    folder: Path,
) -> None:
    """The lines of each (window, partition) of the batch as one segment, sorted by seq."""
    if not invoices:
        return
    partitions, offsets, _ = (np.array(column) for column in zip(*places, strict=True))
    rows = rows.append_column(PARTITION, pa.array(np.repeat(partitions, lengths), pa.int32()))
    rows = rows.append_column(OFFSET, pa.array(np.repeat(offsets, lengths), pa.int64()))
    groups: dict[tuple[WindowKey, int], int] = {}  # (window, partition) -> its group's index
    of_invoice = [
        groups.setdefault(((invoice.t0, invoice.replay, window), partition), len(groups))
        for invoice, (partition, _, window) in zip(invoices, places, strict=True)
    ]
    of_row = np.repeat(np.array(of_invoice), lengths)
    for (key, partition), group in groups.items():
        segment = rows if len(groups) == 1 else rows.take(np.flatnonzero(of_row == group))
        seqs = segment[SEQ].to_numpy()
        if np.any(seqs[1:] < seqs[:-1]):  # records of a partition out of send order
            segment = segment.take(np.argsort(seqs, kind="stable"))
        first_offset = offsets[of_invoice.index(group)]
        target = folder / window_folder(key)
        target.mkdir(parents=True, exist_ok=True)
        name = Segment(partition, first_offset, seqs.min(), seqs.max()).name
        partial = target / f".{name}.{uuid.uuid4().hex}"
        write_segment(segment, partial)
        os.replace(partial, target / name)


def _messages(messages: list[tuple], dates: pa.Array | pa.ChunkedArray) -> pa.Table:
    """MESSAGES rows from MESSAGE_FIELDS tuples and their invoice dates."""
    columns = list(zip(*messages, strict=True)) if messages else [[]] * len(MESSAGE_FIELDS)
    arrays = [
        pa.array(list(values), type=MESSAGES.field(name).type)
        for name, values in zip(MESSAGE_FIELDS, columns, strict=True)
    ]
    return pa.Table.from_arrays([*arrays, dates], schema=MESSAGES)


def window_rows(
    staged: list[Path], key: WindowKey, excluded: list[tuple[int, int]]
) -> Iterator[pa.RecordBatch]:
    """A window's lines from the staged batch folders `staged` (in batch order), in the window
    file's schema and the replay's order, without the invoices at `excluded` (partition,
    offset): merged from each partition's segments, one segment per partition in memory."""
    segments = []  # (partition, batch, first offset, first seq, last seq, path)
    for batch, folder in enumerate(staged):
        for path in (folder / window_folder(key)).glob("p*.arrow"):
            segment = Segment.of(path)
            place = (segment.partition, batch, segment.offset)
            segments.append((*place, segment.low, segment.high, path))
    # A partition's segments in the order it was read form one run while their seqs increase,
    # as they do when the producer sent the replay in order; any that does not starts a run.
    runs: list[list[Path]] = []
    last: tuple[int, int] | None = None  # (partition, last seq) of the run being built
    for partition, _, _, low, high, path in sorted(segments):
        if last is None or last[0] != partition or low <= last[1]:
            runs.append([])
        runs[-1].append(path)
        last = (partition, high)
    late = set(excluded)  # few: the late invoices of an event-time window
    for rows in merge_runs(runs):
        if late:
            places = zip(rows[PARTITION].to_pylist(), rows[OFFSET].to_pylist(), strict=True)
            rows = rows.filter(pa.array([place not in late for place in places], pa.bool_()))
        yield from rows.select(ARROW_SCHEMA.names).to_batches()
