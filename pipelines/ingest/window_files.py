"""Window files: the durable hand-off from the stream to training.

A window is `window-<i>.parquet` plus `window-<i>.json`, its manifest. The Parquet file is written
first and the manifest last, each atomically (temp file, fsync, rename, fsync of the folder), so a
manifest on disk means its window is complete. The manifest, not the consumer group's committed
offsets, is the source of truth on restart: it says where in each partition the next window begins.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import DEFAULT_WINDOWS, Settings
from pipelines.data.schema import COLUMNS
from pipelines.ingest.messages import invoice_starts

# Parquet schema of every window file. Timestamps in microseconds: Spark reads those natively,
# while nanosecond Parquet timestamps are refused.
ARROW_SCHEMA = pa.schema(
    [
        ("InvoiceNo", pa.string()),
        ("StockCode", pa.string()),
        ("Description", pa.string()),
        ("Quantity", pa.int64()),
        ("InvoiceDate", pa.timestamp("us")),
        ("UnitPrice", pa.float64()),
        ("CustomerID", pa.string()),
        ("Country", pa.string()),
    ]
)
# Rows per Parquet row group. Fixed, so that a window's file has the same bytes however its rows
# reached the writer, and small enough that the writer's buffer does not grow with the window.
ROW_GROUP_ROWS = 50_000


@dataclass
class Manifest:
    """What a window holds and where it came from in Kafka."""

    window: int
    topic: str
    # partition -> [first offset, end offset) consumed into this window, end exclusive.
    offsets: dict[int, list[int]]
    rows: int
    digest: str
    first_invoice_date: str | None
    last_invoice_date: str | None
    replay: str = ""
    # Index of this window within its replay (0-based): with the replay, it says what the window is.
    replay_window: int = 0
    replay_started_ms: int = 0
    # Event-time windows only (None otherwise): the window's calendar period [start, end), and
    # per partition the [replay start, replay, greatest InvoiceDate in ms or null = replay ended]
    # read before `offsets`' end, which a restart restores (pipelines/ingest/window_rule.py).
    window_start: str | None = None
    window_end: str | None = None
    frontiers: dict[int, list] | None = None
    schema_version: int = 1
    # When the consumer closed the window and wrote it (UTC, to the millisecond): where the
    # window's freshness starts, which the stream service logs and bench/freshness.py measures.
    created_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat("T", "milliseconds")
    )

    @property
    def closed_at(self) -> float:
        """`created_at` in seconds since the epoch."""
        return datetime.fromisoformat(self.created_at).timestamp()

    @property
    def parquet_name(self) -> str:
        return f"window-{self.window}.parquet"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["offsets"] = {int(p): list(r) for p, r in raw["offsets"].items()}
        if raw.get("frontiers") is not None:
            raw["frontiers"] = {int(p): list(f) for p, f in raw["frontiers"].items()}
        raw.pop("parquet", None)
        return cls(**raw)

    def to_json(self) -> str:
        data = asdict(self)
        data["parquet"] = self.parquet_name
        return json.dumps(data, indent=2, sort_keys=True)


def rows_digest(rows: pd.DataFrame | pa.Table | pa.RecordBatch) -> str:
    """Order-independent digest of a multiset of rows (a pandas frame or Arrow rows).

    The sum (mod 2**64) of per-row hashes: the digests of disjoint windows add up to the digest of
    their union, so "the windows together hold exactly the input" is one comparison.
    """
    if len(rows) == 0:
        return digest_text(0)
    return digest_text(int(row_hashes(rows).sum(dtype=np.uint64)))


def row_hashes(rows: pd.DataFrame | pa.Table | pa.RecordBatch) -> np.ndarray:
    """Each row's hash, which depends on that row alone: the digest of any part of the rows is
    the sum of its hashes, so an engine can digest a window piece by piece."""
    return pd.util.hash_pandas_object(_normalised(rows), index=False).to_numpy(np.uint64)


def digest_text(total: int) -> str:
    """A sum of row hashes as a digest."""
    return f"{total % 2**64:016x}"


def _normalised(rows: pd.DataFrame | pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """The same rows hash the same whether they come from a CSV, Kafka or Parquet."""
    out = {}
    for column in COLUMNS:
        values = rows[column]
        values = (
            values.to_numpy(zero_copy_only=False)
            if isinstance(values, pa.Array | pa.ChunkedArray)
            else values.to_numpy()
        )
        if column == "InvoiceDate":
            out[column] = values.astype("datetime64[us]").astype("int64")
        elif column == "Quantity":
            out[column] = values.astype("int64")
        elif column == "UnitPrice":
            out[column] = values.astype("float64")
        else:  # text; a missing value must not hash like an empty string
            values = values.astype(object)
            out[column] = np.where(pd.isna(values), "\x00<missing>", values).astype(object)
    return pd.DataFrame(out, copy=False)


def combine_digests(digests: list[str]) -> str:
    return digest_text(sum(int(d, 16) for d in digests))


def window_path(windows_dir: Path, index: int) -> Path:
    return windows_dir / f"window-{index}.parquet"


def manifest_path(windows_dir: Path, index: int) -> Path:
    return windows_dir / f"window-{index}.json"


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success make it durable and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: a reader, or a restart, sees the old or the new."""
    with _atomic_target(path) as tmp:
        tmp.write_text(text)


def write_window(frame: pd.DataFrame, windows_dir: Path, manifest: Manifest) -> Manifest:
    """Write a window's rows then its manifest, both atomically; return the manifest."""
    table = pa.Table.from_pandas(frame[list(COLUMNS)], schema=ARROW_SCHEMA, preserve_index=False)
    return write_window_batches(table.to_batches(), windows_dir, manifest)


def write_window_batches(
    batches: Iterable[pa.RecordBatch], windows_dir: Path, manifest: Manifest
) -> Manifest:
    """Write a window's rows, given in batches of any size, then its manifest, both atomically;
    at most a row group of rows is held at a time. Return the manifest."""
    with (
        _atomic_target(window_path(windows_dir, manifest.window)) as tmp,
        pq.ParquetWriter(tmp, ARROW_SCHEMA, compression="zstd") as writer,
    ):
        held: list[pa.RecordBatch] = []
        for batch in batches:
            held.append(batch)
            if sum(b.num_rows for b in held) >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(held, ARROW_SCHEMA)
                whole = table.num_rows // ROW_GROUP_ROWS * ROW_GROUP_ROWS
                writer.write_table(table.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
                held = table.slice(whole).to_batches()
        if held:
            writer.write_table(pa.Table.from_batches(held, ARROW_SCHEMA))
    atomic_write_text(manifest_path(windows_dir, manifest.window), manifest.to_json())
    return manifest


def write_windows(
    frame: pd.DataFrame,
    windows_dir: Path,
    windows: int = DEFAULT_WINDOWS,
    *,
    topic: str = Settings.kafka_topic,
    partitions: int = 3,
    replay: str = "offline",
) -> list[Manifest]:
    """Write `frame` as `windows` consecutive windows with their manifests, as the consumer leaves
    a replay of it, without Kafka: to train on a file directly (`pipelines.train` reads only the
    window files), as the benchmarks and tests do.

    The rows are cut by the consumer's rule (pipelines/ingest/window_rule.py): the invoice whose
    first row is row `seq` falls in window `seq // ceil(rows / windows)`, and no invoice is split.
    The offsets are those of one message per invoice sent round-robin to `partitions` partitions
    of a new topic; the producer keys messages by InvoiceNo, so a real topic spreads them
    otherwise, but the ranges tile each partition in the same way.
    """
    starts = invoice_starts(frame)
    size = math.ceil(len(frame) / windows) if windows > 0 else 0
    # Message index where each window begins, and its end.
    bounds = np.searchsorted(starts // max(size, 1), np.arange(windows + 1))
    if windows < 1 or (np.diff(bounds) == 0).any():
        raise ValueError(f"cannot cut {len(frame)} rows of {len(starts)} invoices in {windows}")
    row_starts = [*starts.tolist(), len(frame)]

    def sent_to(partition: int, messages: int) -> int:
        """How many of the first `messages` messages went to `partition`."""
        return len(range(partition, messages, partitions))

    manifests = []
    for index, (first, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = frame.iloc[row_starts[first] : row_starts[end]]
        manifest = Manifest(
            window=index + 1,
            topic=topic,
            offsets={p: [sent_to(p, first), sent_to(p, end)] for p in range(partitions)},
            rows=len(part),
            digest=rows_digest(part),
            first_invoice_date=str(part["InvoiceDate"].min()),
            last_invoice_date=str(part["InvoiceDate"].max()),
            replay=replay,
            replay_window=index,
        )
        manifests.append(write_window(part, windows_dir, manifest))
    return manifests


def read_window(windows_dir: Path, index: int) -> pd.DataFrame:
    return pq.read_table(window_path(windows_dir, index)).to_pandas()


def read_manifests(windows_dir: Path) -> list[Manifest]:
    """Every complete window's manifest, in window order."""
    manifests = [Manifest.from_json(p.read_text()) for p in windows_dir.glob("window-*.json")]
    return sorted(manifests, key=lambda m: m.window)


def manifests_of_topic(windows_dir: Path, topic: str) -> list[Manifest]:
    """The manifests a consumer of `topic` resumes from; ValueError if the folder holds another
    topic's windows."""
    manifests = read_manifests(windows_dir)
    if manifests and manifests[-1].topic != topic:
        raise ValueError(
            f"{windows_dir} holds windows of topic {manifests[-1].topic!r}, not {topic!r}; "
            "choose another --output-dir"
        )
    return manifests
