"""The Spark engine's executor side: Kafka records in, staged rows and message metadata out.

Runs inside Spark's Python workers (`mapInArrow`), one Arrow batch of records at a time, so that
every partition of the topic is decoded in parallel. It decodes each record with the consumer's
own `decode` (pipelines/ingest/messages.py), puts each invoice in its window with the rule's own
`WindowRule.key` and builds its rows with `invoices_batch` (pipelines/ingest/spill.py), as the
kafka-python engine does. Out come two kinds of rows in one schema, `STAGED`:

- one row per invoice line (`line` >= 0): the line in the window schema, plus where it came from
  and its window; written to disk, where they wait until their window closes;
- one row per message (`line` = -1): its kind, window, row count, digest (the sum of its rows'
  hashes, pipelines/ingest/window_files.py), event time, and for a poison message the reason and
  the value. Only these go to the driver, which applies the rest of the rule to them
  (pipelines/ingest/spark_ledger.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipelines.ingest.messages import EndOfReplay, Invoice, PoisonMessage, decode
from pipelines.ingest.spill import SEQ, invoices_batch
from pipelines.ingest.window_files import ARROW_SCHEMA, digest_text, row_hashes
from pipelines.ingest.window_rule import WindowRule, event_ms

# The records the Kafka source gives, as the engine selects them (timestamp in epoch ms).
RECORD_COLUMNS = ("partition", "offset", "timestamp_ms", "value")
MESSAGE_LINE = -1  # `line` of a message's own row

STAGED = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("line", pa.int32()),  # the line's index in its invoice; MESSAGE_LINE: the message
        ("kind", pa.string()),  # invoice, end or poison
        ("t0", pa.int64()),  # the replay: its start and id
        ("replay", pa.string()),
        ("window", pa.int64()),  # the window's index within its replay (invoices only)
        ("seq", pa.int64()),  # the invoice's first line in the replay: the window's row order
        ("event_ms", pa.int64()),  # event time only: InvoiceDate in epoch ms
        ("rows", pa.int64()),  # message rows: its invoice's lines
        ("digest", pa.string()),  # message rows: the sum of their hashes
        ("reason", pa.string()),  # poison: why
        ("value", pa.binary()),  # poison: the record's value, for the dead letters
        *ARROW_SCHEMA,  # line rows: the line; message rows: the invoice header
    ]
)
# A message's own row: these fields, and for an invoice its header (the window columns it shares).
MESSAGE_FIELDS = (
    "partition",
    "offset",
    "kind",
    "t0",
    "replay",
    "window",
    "seq",
    "event_ms",
    "rows",
    "digest",
    "reason",
    "value",
)
HEADER_COLUMNS = ("InvoiceNo", "InvoiceDate", "CustomerID", "Country")
WHERE = ("partition", "offset", "t0", "replay", "window", "seq")  # what each line row repeats


def stage_records(batches: Iterator[pa.RecordBatch], rule: WindowRule) -> Iterator[pa.RecordBatch]:
    """`mapInArrow`'s function: each batch of records as STAGED rows."""
    for batch in batches:
        yield from stage(batch, rule).to_batches()


def stage(batch: pa.RecordBatch, rule: WindowRule) -> pa.Table:
    """One batch of records (RECORD_COLUMNS) as STAGED rows: every line of every invoice, and
    one row for every message."""
    invoices: list[Invoice] = []
    keyed: list[tuple[int, int, int]] = []  # each invoice's partition, offset and window
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
        keyed.append((partition, offset, rule.key(message, timestamp_ms)[2]))

    rows = pa.Table.from_batches([invoices_batch(invoices)]).drop_columns([SEQ])
    lengths = np.fromiter(map(len, invoices), dtype=np.int64, count=len(invoices))
    firsts = np.cumsum(lengths) - lengths
    sums = np.add.reduceat(row_hashes(rows), firsts) if invoices else []
    by_event_time = rule.by == "event-time"
    described = _columns(
        [
            (partition, offset, "invoice", invoice.t0, invoice.replay, window, invoice.seq)
            + (event_ms(invoice.header[1]) if by_event_time else None, len(invoice))
            + (digest_text(int(total)), None, None)
            for (partition, offset, window), invoice, total in zip(
                keyed, invoices, sums, strict=True
            )
        ]
    )
    where = {name: np.repeat(np.array(described[name], dtype=object), lengths) for name in WHERE}
    where["line"] = np.arange(rows.num_rows) - np.repeat(firsts, lengths)
    header = rows.select(HEADER_COLUMNS).take(pa.array(firsts, type=pa.int64()))
    return pa.concat_tables(
        [
            _staged({**_by_name(rows), **where}, rows.num_rows),
            _staged({**_by_name(header), **described}, len(invoices)),
            _staged(_columns(others), len(others)),
        ]
    )


def _columns(messages: list[tuple]) -> dict[str, list]:
    """Message rows (MESSAGE_FIELDS tuples) as columns."""
    columns: dict[str, list] = {name: [] for name in MESSAGE_FIELDS}
    for message in messages:
        for name, value in zip(MESSAGE_FIELDS, message, strict=True):
            columns[name].append(value)
    return columns


def _by_name(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return dict(zip(table.column_names, table.columns, strict=True))


def _staged(columns: dict[str, object], count: int) -> pa.Table:
    """`count` STAGED rows from `columns`; the columns not given are null, `line` (if not given)
    is MESSAGE_LINE."""
    columns = {"line": [MESSAGE_LINE] * count, **columns}
    arrays = [
        _array(columns[field.name], field.type) if field.name in columns else pa.nulls(count)
        for field in STAGED
    ]
    casts = [array.cast(field.type) for array, field in zip(arrays, STAGED, strict=True)]
    return pa.Table.from_arrays(casts, schema=STAGED)


def _array(values: object, kind: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    return pa.array(values, type=kind)
