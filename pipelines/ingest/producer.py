"""Replay a dataset file into Kafka, one invoice per message, in file order.

    python -m pipelines.produce --input data/online_retail.csv [--rate ROWS_PER_S] [--limit ROWS]
    python -m pipelines.produce --input data/online_retail.csv --speedup 60000  # a live source

Delivery is idempotent and durable (acks=all, retries until `delivery_timeout_ms`), so a broker
restart mid-replay neither loses nor duplicates a message. On a cluster of three brokers or more
the topic has three replicas and `min.insync.replicas=2` (pipelines/ingest/replication.py): an
acknowledged message is on two brokers at least, and losing one broker stops nothing. When the
replay ends, an end-of-replay marker goes to every partition (see pipelines/messages.py).

Memory does not grow with the file: it is read in chunks (`pipelines.data.load.iter_transactions`)
in two passes. Every message carries the replay's row count, which only the whole file tells, so
the first pass validates and counts the rows and spools them to temporary Arrow files (in the
system's temporary directory, `TMPDIR`); the second reads them back a chunk at a time and sends.
An invoice's rows are contiguous in the file, so the rows that may continue in the next chunk wait
for it: no invoice is split across messages.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import TopicAlreadyExistsError
from tqdm import tqdm

from pipelines.config import Settings
from pipelines.data.load import CHUNK_ROWS, iter_transactions
from pipelines.ingest.messages import HEADER_FIELDS, encode_end, encode_invoice, invoice_starts
from pipelines.ingest.replication import replication

PRODUCER_CONFIG = {
    "acks": "all",
    "enable_idempotence": True,
    "delivery_timeout_ms": 180_000,
    "linger_ms": 20,
    "batch_size": 512 * 1024,
    "max_request_size": 8 * 1024 * 1024,
}


@dataclass(frozen=True)
class ReplaySummary:
    replay: str
    rows: int
    messages: int
    bytes: int
    seconds: float
    malformed_lines: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")

    def __str__(self) -> str:
        return (
            f"replay {self.replay}: {self.rows:,} rows in {self.messages:,} messages, "
            f"{self.bytes / 1e6:,.1f} MB in {self.seconds:.2f} s "
            f"({self.rows_per_second:,.0f} rows/s); {self.malformed_lines} malformed lines skipped"
        )


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    """Create the topic with `partitions` partitions, replicated as the live brokers allow
    (`replication`), unless it exists (then it is left as is)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="retail-producer")
    try:
        described = admin.describe_cluster()["brokers"]
        replicas, min_insync = replication(sum(not b.get("is_fenced") for b in described))
        options = {
            "num_partitions": partitions,
            "replication_factor": replicas,
            "configs": {"min.insync.replicas": str(min_insync)},
        }
        admin.create_topics({topic: options})
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def invoice_messages(
    frame: pd.DataFrame, starts: np.ndarray
) -> Iterator[tuple[int, list, list[tuple]]]:
    """Yield (index of the first row, header, lines) for each run of rows sharing one invoice
    header (InvoiceNo, InvoiceDate, CustomerID, Country); `starts` = invoice_starts(frame)."""
    header_columns = [frame[name] for name in HEADER_FIELDS]
    invoices, dates, customers, countries = (c.iloc[starts] for c in header_columns)
    headers = zip(
        invoices.astype(str).tolist(),
        np.datetime_as_string(dates.to_numpy("datetime64[s]")).tolist(),
        _text_or_none(customers),
        countries.astype(str).tolist(),
        strict=True,
    )
    lines = list(
        zip(
            frame["StockCode"].astype(str).tolist(),
            _text_or_none(frame["Description"]),
            frame["Quantity"].astype("int64").tolist(),
            frame["UnitPrice"].astype("float64").tolist(),
            strict=True,
        )
    )
    bounds = [*starts.tolist(), len(frame)]
    for start, end, header in zip(bounds, bounds[1:], headers, strict=False):
        yield start, list(header), lines[start:end]


@dataclass
class Pacing:
    """When each invoice message is due, in seconds after the replay starts, chunk after chunk.

    At `rate` rows/s a message waits for the rows before it. At `speedup` X the replay is a live
    source: each message waits for the gap between its InvoiceDate and the first one, divided by
    X (a year in about 9 minutes at X = 60,000); an invoice dated before an earlier one goes
    without waiting. Neither: every message is due at once.
    """

    rate: float = 0.0
    speedup: float = 0.0
    # Speedup: the first invoice's date and the latest date so far (epoch ms), across chunks.
    _first_ms: int | None = field(default=None, init=False)
    _latest_ms: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate > 0 and self.speedup > 0:
            raise ValueError("choose one of rate and speedup")

    def due(self, frame: pd.DataFrame, starts: np.ndarray, first_row: int = 0) -> np.ndarray:
        """When the messages starting at rows `starts` of `frame` are due; `frame` begins at row
        `first_row` of the replay and follows the chunks given before."""
        if self.rate > 0:
            return (first_row + starts) / self.rate  # the rows before each message
        if self.speedup > 0 and len(starts):
            dates = frame["InvoiceDate"].to_numpy("datetime64[ms]")[starts].astype(np.int64)
            if self._first_ms is None:
                self._first_ms = self._latest_ms = int(dates[0])
            latest = np.maximum.accumulate(np.r_[self._latest_ms, dates])[1:]
            self._latest_ms = int(latest[-1])
            return (latest - self._first_ms) / 1000 / self.speedup
        return np.zeros(len(starts))


def whole_invoices(frames: Iterable[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, int]]:
    """The frames re-cut so that no run of rows sharing an invoice header straddles two, each
    with the index of its first row in the replay: the last run of a frame may go on in the next,
    so it waits for it."""
    first, held = 0, None
    for frame in frames:
        if held is not None:
            frame = pd.concat([held, frame], ignore_index=True)
        if frame.empty:
            continue
        cut = int(invoice_starts(frame)[-1])
        ready, held = frame.iloc[:cut], frame.iloc[cut:].reset_index(drop=True)
        if len(ready):
            yield ready, first
            first += len(ready)
    if held is not None and len(held):
        yield held, first


def _text_or_none(column: pd.Series) -> list[str | None]:
    return column.astype(object).where(column.notna(), None).tolist()


@dataclass
class _Spool:
    """The rows to replay, validated and counted, on disk between the two passes."""

    folder: Path
    rows: int = 0
    malformed: int = 0
    files: list[Path] = field(default_factory=list)

    def fill(self, path: Path, limit: int, chunk_rows: int) -> None:
        """Read `path` a chunk at a time; keep its first `limit` rows (all if 0)."""
        for chunk in iter_transactions(path, chunk_rows):
            for line in chunk.malformed[: max(0, 10 - self.malformed)]:
                print(f"skipped malformed {line.where}: {line.reason}", file=sys.stderr)
            self.malformed += len(chunk.malformed)
            frame = chunk.frame.head(limit - self.rows) if limit > 0 else chunk.frame
            if len(frame):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                self.files.append(self.folder / f"chunk-{len(self.files):06d}.arrow")
                with pa.ipc.new_file(str(self.files[-1]), table.schema, options=_SPOOL) as out:
                    out.write_table(table)
                self.rows += len(frame)
            if limit > 0 and self.rows >= limit:
                return

    def frames(self) -> Iterator[pd.DataFrame]:
        """The rows again, a chunk at a time; each file goes once read."""
        for path in self.files:
            with pa.OSFile(str(path)) as source:
                frame = pa.ipc.open_file(source).read_all().to_pandas()
            path.unlink()
            yield frame


_SPOOL = pa.ipc.IpcWriteOptions(compression="lz4")  # read back once: fast beats small


def replay(
    path: Path,
    settings: Settings,
    rate: float = 0.0,
    limit: int = 0,
    partitions: int = 3,
    progress: bool = True,
    *,
    speedup: float = 0.0,
    chunk_rows: int = CHUNK_ROWS,
) -> ReplaySummary:
    """Send the file's rows (the first `limit` if > 0) at `rate` rows/s or by their InvoiceDates
    `speedup` times faster than they happened (`Pacing`; 0 and 0 = unthrottled), reading
    `chunk_rows` records at a time."""
    pacing = Pacing(rate, speedup)
    with tempfile.TemporaryDirectory(prefix="replay-") as folder:
        spool = _Spool(Path(folder))
        spool.fill(path, limit, chunk_rows)
        if spool.rows == 0:
            raise ValueError(f"{path} holds no valid rows to replay")
        return _send(spool, settings, pacing, partitions, progress)


def _send(
    spool: _Spool, settings: Settings, pacing: Pacing, partitions: int, progress: bool
) -> ReplaySummary:
    total = spool.rows
    ensure_topic(settings.kafka_bootstrap_servers, settings.kafka_topic, partitions)
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="retail-producer",
        **PRODUCER_CONFIG,
    )
    replay_id = uuid.uuid4().hex[:12]
    errors: list[Exception] = []
    sent_rows = sent_bytes = messages = 0
    started = time.perf_counter()
    t0 = int(time.time() * 1000)
    with tqdm(total=total, unit="rows", disable=not progress, desc="produce") as bar:
        for frame, first_row in whole_invoices(spool.frames()):
            starts = invoice_starts(frame)
            schedule = pacing.due(frame, starts, first_row)
            for (start, header, lines), due in zip(
                invoice_messages(frame, starts), schedule, strict=True
            ):
                wait = due - (time.perf_counter() - started)
                if wait > 0:
                    time.sleep(wait)
                value = encode_invoice(replay_id, first_row + start, total, t0, header, lines)
                future = producer.send(settings.kafka_topic, key=header[0].encode(), value=value)
                future.add_errback(errors.append)
                messages += 1
                sent_rows += len(lines)
                sent_bytes += len(value)
                bar.update(len(lines))
        end = encode_end(replay_id, total, t0)
        for partition in sorted(producer.partitions_for(settings.kafka_topic)):
            producer.send(settings.kafka_topic, value=end, partition=partition).add_errback(
                errors.append
            )
        producer.flush()
    producer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} messages were not delivered; first: {errors[0]!r}")
    seconds = time.perf_counter() - started
    return ReplaySummary(replay_id, sent_rows, messages, sent_bytes, seconds, spool.malformed)
