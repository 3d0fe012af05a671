"""Open windows on disk: each window's rows go to temporary files as they arrive, so the consumer's
memory does not grow with the window (issue 11, "Bounded memory").

A window buffers at most `SPILL_BATCH_ROWS` rows in memory, then appends them as one Arrow IPC
segment per partition. A partition's messages arrive in the order they were sent, which is file
order (`seq`), so each partition's segments form a sorted run (a message out of that order starts
a new run). When the window closes, `WindowSpill.batches` merges the runs by `seq`, holding one
segment per run, and yields the rows in file order: the window file is the same, byte for byte,
however the partitions interleaved. The digest and the date range are kept as segments are
written (`rows_digest` is a sum, so it adds up). A window that closes before it fills a batch
never touches the disk.

The spill files live under `<windows dir>/.spill/<id>/`, one folder per consumer process, locked
while it runs (`SpillArea`). They are never the source of truth: the rows of a window that has not
closed are read from Kafka again after a restart or a rebalance, so its files are discarded then,
and a consumer removes the folders of consumers that are gone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.schema import COLUMNS
from pipelines.ingest.messages import HEADER_FIELDS, LINE_FIELDS, Invoice, invoice_date
from pipelines.ingest.window_files import ARROW_SCHEMA, rows_digest

# Rows an open window buffers in memory before they go to its files: the consumer's memory per
# open window, whatever the window's size.
SPILL_BATCH_ROWS = 20_000
SPILL_FOLDER = ".spill"
SEQ = "_seq"  # the message's seq, kept beside each spilled row for the merge
_SCHEMA = ARROW_SCHEMA.append(pa.field(SEQ, pa.int64()))
_IPC = pa.ipc.IpcWriteOptions(compression="lz4")  # spill files are read once: fast beats small


def invoices_batch(invoices: list[Invoice]) -> pa.RecordBatch:
    """Invoices' rows in the window file's schema plus each row's message seq (`SEQ`), each
    invoice header repeated per line."""
    columns: dict[str, list] = {name: [] for name in (*COLUMNS, SEQ)}
    for invoice in invoices:
        lines = len(invoice)
        number, date, customer, country = invoice.header
        header = (number, invoice_date(date), customer, country)
        for name, value in zip(HEADER_FIELDS, header, strict=True):
            columns[name].extend(repeat(value, lines))
        for name, values in zip(LINE_FIELDS, invoice.columns, strict=True):
            columns[name].extend(values)
        columns[SEQ].extend(repeat(invoice.seq, lines))
    arrays = [pa.array(columns[f.name], f.type) for f in _SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA)


@dataclass
class _Run:
    """Segments of one partition whose messages are in increasing seq order."""

    segments: list[Path] = field(default_factory=list)
    buffer: list[Invoice] = field(default_factory=list)
    last_seq: int = -1


@dataclass
class _Cursor:
    """Where the merge stands in one run: its loaded segment (`head`) and the segments after."""

    segments: list[Path]
    loaded: int = 0
    head: pa.Table | None = None

    @property
    def more(self) -> bool:
        return self.loaded < len(self.segments)

    def load(self) -> None:
        """Read the next segment once the head is used up."""
        if (self.head is None or self.head.num_rows == 0) and self.more:
            with pa.OSFile(str(self.segments[self.loaded])) as source:
                self.head = pa.ipc.open_file(source).read_all()
            self.loaded += 1

    def take_through(self, seq: int) -> pa.Table:
        """The head's rows up to message `seq`, removed from the head."""
        assert self.head is not None
        count = int(np.searchsorted(self.head[SEQ].to_numpy(), seq, side="right"))
        taken, self.head = self.head.slice(0, count), self.head.slice(count)
        return taken


def write_segment(rows: pa.Table, path: Path) -> None:
    """One segment file: `rows` (SEQ among their columns), as one Arrow IPC record batch."""
    with pa.ipc.new_file(str(path), rows.schema, options=_IPC) as writer:
        writer.write_table(rows, max_chunksize=max(1, rows.num_rows))


def merge_runs(runs: list[list[Path]]) -> Iterator[pa.Table]:
    """The rows of sorted runs of segment files, in seq order, holding one segment per run.

    A run is a list of segments whose rows are in increasing SEQ order across the whole run
    (rows of one message share its seq and keep their order). Out come tables of every column
    the segments have, in seq order; equal seqs keep their run's order.
    """
    cursors = [_Cursor(segments) for segments in runs]
    while True:
        for cursor in cursors:
            cursor.load()
        loaded = [c for c in cursors if c.head is not None and c.head.num_rows]
        if not loaded:
            return
        # A run's unread rows come after its head: rows up to the least head end among the
        # runs with segments still unread are in their final order already.
        ends = [c.head[SEQ][-1].as_py() for c in loaded if c.more]
        horizon = min(ends, default=np.iinfo(np.int64).max)
        ready = pa.concat_tables([c.take_through(horizon) for c in loaded])
        yield ready.take(np.argsort(ready[SEQ].to_numpy(), kind="stable"))


class WindowSpill:
    """One window's rows: buffered, then in segment files under `folder` (made when needed)."""

    def __init__(self, folder: Path, batch_rows: int = SPILL_BATCH_ROWS) -> None:
        if batch_rows < 1:
            raise ValueError(f"spill batch rows must be >= 1, got {batch_rows}")
        self.folder = folder
        self.batch_rows = batch_rows
        self.rows = 0
        self._runs: dict[int, list[_Run]] = {}  # partition -> its runs, the open one last
        self._buffered = 0
        self._segments = 0
        self._digest = 0
        self._dates: tuple[datetime, datetime] | None = None
        # Once closed, the rows of a window that never reached the disk, in file order, and
        # whether the digest and dates count them yet.
        self._in_memory: pa.RecordBatch | None = None
        self._in_memory_counted = False

    def add(self, partition: int, invoice: Invoice) -> None:
        runs = self._runs.setdefault(partition, [_Run()])
        if invoice.seq <= runs[-1].last_seq:  # not in send order: a run of its own
            runs.append(_Run())
        runs[-1].buffer.append(invoice)
        runs[-1].last_seq = invoice.seq
        self.rows += len(invoice)
        self._buffered += len(invoice)
        if self._buffered >= self.batch_rows:
            self._write_buffers()

    def _write_buffers(self) -> None:
        for runs in self._runs.values():
            for run in runs:
                self._write(run)

    def _write(self, run: _Run) -> None:
        """The run's buffered rows to a new segment file, counted in the digest and dates."""
        if not run.buffer:
            return
        batch = invoices_batch(run.buffer)
        self._count(batch)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"segment-{self._segments:06d}.arrow"
        write_segment(pa.Table.from_batches([batch]), path)
        self._segments += 1
        run.segments.append(path)
        self._buffered -= batch.num_rows
        run.buffer = []

    def _count(self, batch: pa.RecordBatch) -> None:
        self._digest = (self._digest + int(rows_digest(batch), 16)) % 2**64
        low, high = (v.as_py() for v in pc.min_max(batch["InvoiceDate"]).values())
        if self._dates is not None:
            low, high = min(low, self._dates[0]), max(high, self._dates[1])
        self._dates = (low, high)

    def _close(self) -> None:
        """No more rows come: the buffered ones go to the files, or, when the window never
        reached the disk, stay in memory in file order (fewer than `batch_rows`)."""
        if self._segments:
            self._write_buffers()
        elif self._in_memory is None:
            buffered = [i for p in sorted(self._runs) for run in self._runs[p] for i in run.buffer]
            self._in_memory = invoices_batch(sorted(buffered, key=lambda i: i.seq))
            self._runs.clear()

    def _counted(self) -> None:
        self._close()
        if self._in_memory is not None and not self._in_memory_counted:
            self._count(self._in_memory)
            self._in_memory_counted = True

    @property
    def digest(self) -> str:
        """window_files.rows_digest of every row; the window must be complete."""
        self._counted()
        return f"{self._digest:016x}"

    @property
    def dates(self) -> tuple[datetime, datetime] | None:
        """The first and last InvoiceDate (None for no rows); the window must be complete."""
        self._counted()
        return self._dates

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The window's rows in file order (by seq), merged from the runs a segment at a time;
        the window must be complete."""
        self._close()
        if self._in_memory is not None:
            yield self._in_memory.drop_columns([SEQ])
            return
        runs = [run.segments for p in sorted(self._runs) for run in self._runs[p]]
        for rows in merge_runs(runs):
            yield from rows.drop_columns([SEQ]).to_batches()

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SpillArea:
    """This consumer's spill folder, `<windows dir>/.spill/<id>/`, held under `<id>.lock` while
    the consumer runs. A standby member may share the windows dir, so a folder is removed only
    once its lock is free: its consumer is gone (the kernel frees a dead process's locks)."""

    def __init__(self, windows_dir: Path) -> None:
        self.root = windows_dir / SPILL_FOLDER
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = uuid.uuid4().hex[:12]
        # Locked before it is visible, and visible before the folder exists: a folder without a
        # lock file, or with a free one, belongs to no running consumer.
        pending = self.root / f".{self.name}.lock"
        self._lock = os.open(pending, os.O_CREAT | os.O_RDWR)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        pending.rename(self._lock_path(self.name))
        self.folder = self.root / self.name
        self.folder.mkdir()
        self.sweep()

    def _lock_path(self, name: str) -> Path:
        return self.root / f"{name}.lock"

    def sweep(self) -> None:
        """Remove the folders and locks of consumers that are gone."""
        names = {p.name.removesuffix(".lock") for p in self.root.iterdir()}
        for name in names - {self.name}:
            if name.startswith(".") or self._held(name):
                continue
            shutil.rmtree(self.root / name, ignore_errors=True)
            self._lock_path(name).unlink(missing_ok=True)

    def _held(self, name: str) -> bool:
        """Whether a running consumer holds `name`'s lock."""
        try:
            handle = os.open(self._lock_path(name), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(handle)
        return False

    def close(self) -> None:
        """Remove this consumer's folder and lock."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._lock_path(self.name).unlink(missing_ok=True)
        os.close(self._lock)
