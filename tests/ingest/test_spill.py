"""Open windows on disk (pipelines/ingest/spill.py), without a broker: the rows come back in file
order with the digest of the whole, whatever the batches and runs; the window file's bytes do not
depend on how its rows were batched; temporary files go when they should; and the memory a window
takes does not grow with its size."""

from __future__ import annotations

import fcntl
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.ingest.messages import decode, encode_end, encode_invoice
from pipelines.ingest.spill import SpillArea, WindowSpill
from pipelines.ingest.window_files import (
    ARROW_SCHEMA,
    ROW_GROUP_ROWS,
    Manifest,
    rows_digest,
    window_path,
    write_window_batches,
)
from pipelines.ingest.window_rule import WindowBuilder, WindowRule

T0 = 1_700_000_000_000


def _invoice(seq: int, lines: int, total: int = 10**9) -> bytes:
    header = [f"{536000 + seq}", f"2010-12-{1 + seq % 28:02d} 08:26:00", "17850", "France"]
    body = [[f"SKU{seq}-{i}", None if i % 5 else "HEART", i + 1, 2.5] for i in range(lines)]
    return encode_invoice("r1", seq, total, T0, header, body)


def _table(spill: WindowSpill) -> pa.Table:
    return pa.Table.from_batches(list(spill.batches()), ARROW_SCHEMA)


def _fill(spill: WindowSpill, arrivals: list[tuple[int, int]]) -> None:
    """(partition, seq) in arrival order; invoice `seq` has 1 + seq % 4 lines."""
    for partition, seq in arrivals:
        spill.add(partition, decode(_invoice(seq, 1 + seq % 4)))


# Partition 0 holds the even invoices, partition 1 the odd ones, and each arrives in send order.
IN_ORDER = [(p, s) for s in range(40) for p in (s % 2,)]
# Partition 1 interleaved late, and partition 0 holding a message sent before one it had already
# delivered (a run of its own).
SHUFFLED = [(0, s) for s in range(0, 40, 2)] + [(1, s) for s in range(1, 40, 2)] + [(0, 41)]
SHUFFLED += [(0, 40)]


@pytest.mark.parametrize("arrivals", [IN_ORDER, SHUFFLED], ids=["in-order", "out-of-order"])
def test_rows_come_back_in_file_order_with_the_digest_of_the_whole(tmp_path, arrivals):
    in_memory, spilled = WindowSpill(tmp_path / "a"), WindowSpill(tmp_path / "b", batch_rows=5)
    _fill(in_memory, arrivals)
    _fill(spilled, arrivals)

    assert not (tmp_path / "a").exists()  # a window below one batch never touches the disk
    assert len(list((tmp_path / "b").iterdir())) > 10
    rows = _table(spilled)
    assert rows.equals(_table(in_memory))
    seqs = sorted(seq for _, seq in arrivals)
    assert list(dict.fromkeys(rows["InvoiceNo"].to_pylist())) == [f"{536000 + s}" for s in seqs]
    assert spilled.rows == in_memory.rows == rows.num_rows
    assert spilled.digest == in_memory.digest == rows_digest(rows.to_pandas())
    assert spilled.dates == in_memory.dates
    spilled.discard()
    assert not (tmp_path / "b").exists()


def test_the_window_file_does_not_depend_on_how_its_rows_were_batched(tmp_path):
    spill = WindowSpill(tmp_path / "spill")
    _fill(spill, IN_ORDER * 2)  # a second round: a run of its own, for enough rows
    rows = _table(spill)
    while rows.num_rows <= ROW_GROUP_ROWS:  # more than a row group, so that groups are cut
        rows = pa.concat_tables([rows, rows])
    manifest = Manifest(1, "t", {0: [0, 1]}, rows.num_rows, "0", None, None)

    files = []
    for size in (rows.num_rows, 1_000, 7_777):
        folder = tmp_path / f"batches-of-{size}"
        write_window_batches(rows.to_batches(max_chunksize=size), folder, manifest)
        files.append(window_path(folder, 1).read_bytes())
    assert files[0] == files[1] == files[2]
    written = pq.ParquetFile(window_path(tmp_path / f"batches-of-{1_000}", 1))
    assert written.metadata.row_group(0).num_rows == ROW_GROUP_ROWS
    assert written.read().equals(rows)


def test_a_reset_drops_the_open_windows_files(tmp_path):
    builder = WindowBuilder([0], {0: 0}, spill_dir=tmp_path / "spill", spill_batch_rows=2)
    for offset in range(5):
        builder.add(0, offset, T0, _invoice(offset, 2))
    assert any((tmp_path / "spill").rglob("*.arrow"))
    builder.reset({0: 0})
    assert not any((tmp_path / "spill").rglob("*.arrow"))


def test_the_spill_folders_of_consumers_that_are_gone_are_removed(tmp_path):
    running, gone = SpillArea(tmp_path), SpillArea(tmp_path)
    (gone.folder / "segment-000000.arrow").write_bytes(b"rows of a window never closed")
    fcntl.flock(gone._lock, fcntl.LOCK_UN)  # what the kernel does when a process dies
    orphan = running.root / "0123456789ab"  # its lock file never made it
    orphan.mkdir()

    SpillArea(tmp_path).close()  # a consumer starting sweeps

    assert running.folder.is_dir() and not gone.folder.exists() and not orphan.exists()
    assert sorted(p.name for p in running.root.iterdir()) == [running.name, f"{running.name}.lock"]
    running.close()
    os.close(gone._lock)
    assert list(running.root.iterdir()) == []


def _peak_bytes(spill_dir: Path, window_rows: int, messages: list[bytes]) -> int:
    """Python-heap high-water mark of cutting `messages` into windows of `window_rows` rows and
    reading each closed window back, as the consumer does, spilling 500 rows at a time."""
    rule = WindowRule(rows=window_rows)
    builder = WindowBuilder([0], {0: 0}, rule, spill_dir=spill_dir, spill_batch_rows=500)
    tracemalloc.start()
    try:
        for offset, value in enumerate(messages):
            builder.add(0, offset, T0, value)
            while closed := builder.pop_closed():
                assert closed.digest and sum(b.num_rows for b in closed.batches()) == closed.rows
                closed.discard()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_windows_memory_does_not_grow_with_its_size(tmp_path):
    """Windows of 2,000 and of 20,000 rows (before issue 11 the second took 10 times more)."""
    total = 20_000
    messages = [_invoice(seq, 20, total) for seq in range(0, total, 20)]
    messages.append(encode_end("r1", total, T0))
    _peak_bytes(tmp_path / "warm-up", 2_000, messages[:100])  # one-time caches, not windows
    small = _peak_bytes(tmp_path / "small", 2_000, messages)
    large = _peak_bytes(tmp_path / "large", 20_000, messages)
    assert large < 1.5 * small, f"peak {large:,} B for 20,000-row windows, {small:,} B for 2,000"
