"""Replay a dataset file into Kafka, one invoice per message, in file order.

    python -m pipelines.produce --input data/online_retail.csv [--rate ROWS_PER_S] [--limit ROWS]
    python -m pipelines.produce --input data/online_retail.csv --speedup 60000  # a live source

Delivery is idempotent and durable (acks=all, retries until `delivery_timeout_ms`), so a broker
restart mid-replay neither loses nor duplicates a message. On a cluster of three brokers or more
the topic has three replicas and `min.insync.replicas=2` (pipelines/ingest/replication.py): an
acknowledged message is on two brokers at least, and losing one broker stops nothing. When the
replay ends, an end-of-replay marker goes to every partition (see pipelines/messages.py).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import TopicAlreadyExistsError
from tqdm import tqdm

from pipelines.config import Settings
from pipelines.data.load import load_transactions
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


def invoice_messages(frame: pd.DataFrame) -> Iterator[tuple[int, list, list[tuple]]]:
    """Yield (index of the first row, header, lines) for each run of rows sharing one invoice
    header (InvoiceNo, InvoiceDate, CustomerID, Country)."""
    header_columns = [frame[name] for name in HEADER_FIELDS]
    starts = invoice_starts(frame)
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


def send_schedule(frame: pd.DataFrame, rate: float = 0.0, speedup: float = 0.0) -> np.ndarray:
    """When each invoice message is due, in seconds after the replay starts.

    At `rate` rows/s a message waits for the rows before it. At `speedup` X the replay is a live
    source: each message waits for the gap between its InvoiceDate and the first one, divided by
    X (a year in about 9 minutes at X = 60,000); an invoice dated before an earlier one goes
    without waiting. Neither: every message is due at once.
    """
    if rate > 0 and speedup > 0:
        raise ValueError("choose one of rate and speedup")
    starts = invoice_starts(frame)
    if rate > 0:
        return starts / rate  # the rows before each message
    if speedup > 0:
        dates = frame["InvoiceDate"].to_numpy("datetime64[ms]")[starts].astype(np.int64)
        return (np.maximum.accumulate(dates) - dates[0]) / 1000 / speedup
    return np.zeros(len(starts))


def _text_or_none(column: pd.Series) -> list[str | None]:
    return column.astype(object).where(column.notna(), None).tolist()


def replay(
    path: Path,
    settings: Settings,
    rate: float = 0.0,
    limit: int = 0,
    partitions: int = 3,
    progress: bool = True,
    *,
    speedup: float = 0.0,
) -> ReplaySummary:
    """Send the file's rows (the first `limit` if > 0) at `rate` rows/s or by their InvoiceDates
    `speedup` times faster than they happened (`send_schedule`; 0 and 0 = unthrottled)."""
    loaded = load_transactions(path)
    for line in loaded.malformed[:10]:
        print(f"skipped malformed {line.where}: {line.reason}", file=sys.stderr)
    frame = loaded.frame.head(limit) if limit > 0 else loaded.frame
    total = len(frame)
    if total == 0:
        raise ValueError(f"{path} holds no valid rows to replay")

    schedule = send_schedule(frame, rate, speedup)
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
        for (seq, header, lines), due in zip(invoice_messages(frame), schedule, strict=True):
            wait = due - (time.perf_counter() - started)
            if wait > 0:
                time.sleep(wait)
            value = encode_invoice(replay_id, seq, total, t0, header, lines)
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
    return ReplaySummary(replay_id, sent_rows, messages, sent_bytes, seconds, len(loaded.malformed))
