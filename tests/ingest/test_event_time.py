"""Event-time windows against a real Kafka broker: out-of-order invoices land in their day, a late
one goes to the dead letters, and a consumer stopped after one window and restarted writes the
same windows as one that ran through."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer

from pipelines.config import Settings
from pipelines.consume import main as consume_cli
from pipelines.ingest.consumer import DEAD_LETTERS, consume
from pipelines.ingest.messages import encode_end, encode_invoice
from pipelines.ingest.producer import ensure_topic
from pipelines.ingest.window_files import read_manifests, read_window
from pipelines.ingest.window_rule import WindowRule

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000_000
RULE = WindowRule("event-time", period="day", lateness=timedelta(hours=12))
# (partition, InvoiceNo, InvoiceDate, lines), in the order each partition holds them.
INVOICES = [
    (0, "A", "2010-12-01 09:00:00", 2),
    (0, "B", "2010-12-02 10:00:00", 1),
    (0, "C", "2010-12-01 23:00:00", 1),  # out of order: partition 0's watermark is Dec 1 22:00
    (0, "D", "2010-12-03 15:00:00", 1),
    (0, "E", "2010-12-02 01:00:00", 3),  # late: partition 0's watermark is Dec 3 03:00
    (1, "F", "2010-12-01 12:00:00", 1),
    (1, "G", "2010-12-03 09:00:00", 2),
    (1, "H", "2010-12-02 20:00:00", 1),  # out of order: partition 1's watermark is Dec 2 21:00
]
DAYS = [
    ("2010-12-01 00:00:00", "ACF"),
    ("2010-12-02 00:00:00", "BH"),
    ("2010-12-03 00:00:00", "DG"),
]


def _send(bootstrap: str, topic: str) -> None:
    """The invoices then an end-of-replay marker, to the partitions they name."""
    ensure_topic(bootstrap, topic, 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    total = sum(lines for *_, lines in INVOICES)
    for seq, (partition, number, date, lines) in enumerate(INVOICES):
        header = [number, date, "17850", "United Kingdom"]
        body = [["85123A", "HEART", 1, 2.55]] * lines
        value = encode_invoice("r1", seq, total, T0, header, body)
        producer.send(topic, value=value, partition=partition)
    for partition in (0, 1):
        producer.send(topic, value=encode_end("r1", total, T0), partition=partition)
    producer.flush()
    producer.close()


def _settings(bootstrap: str, topic: str, group: str) -> Settings:
    return replace(
        Settings.from_env(),
        kafka_bootstrap_servers=bootstrap,
        kafka_topic=topic,
        kafka_group=f"{topic}-{group}",
    )


def _windows(windows_dir: Path) -> list[tuple[str | None, str]]:
    """(window start, its invoices in file order) of each window written."""
    return [
        (m.window_start, "".join(read_window(windows_dir, m.window)["InvoiceNo"].unique()))
        for m in read_manifests(windows_dir)
    ]


def test_out_of_order_invoices_land_in_their_day_and_the_late_one_is_a_dead_letter(
    kafka_bootstrap, unique_topic, tmp_path, capsys
):
    """Through the command a user types."""
    topic = unique_topic("event-time")
    _send(kafka_bootstrap, topic)
    argv = ["--window-by", "event-time", "--window-period", "day", "--allowed-lateness", "12h"]
    argv += ["--topic", topic, "--group", f"{topic}-through", "--output-dir", str(tmp_path)]

    consume_cli([*argv, "--bootstrap-servers", kafka_bootstrap, "--no-progress"])

    assert "wrote window-1, window-2, window-3 (9 rows); 1 dead letters (3 late rows)" in (
        capsys.readouterr().out
    )
    assert _windows(tmp_path) == DAYS
    assert [m.window_end for m in read_manifests(tmp_path)] == [
        "2010-12-02 00:00:00",
        "2010-12-03 00:00:00",
        "2010-12-04 00:00:00",
    ]
    (letter,) = map(json.loads, (tmp_path / DEAD_LETTERS).read_text().splitlines())
    assert (letter["partition"], letter["offset"]) == (0, 4)
    assert "day window [2010-12-02 00:00:00, 2010-12-03 00:00:00)" in letter["reason"]
    assert "watermark was 2010-12-03 03:00:00" in letter["reason"]


def test_stopped_after_one_window_and_restarted_it_writes_the_same_windows(
    kafka_bootstrap, unique_topic, tmp_path
):
    topic = unique_topic("event-time")
    _send(kafka_bootstrap, topic)
    settings = _settings(kafka_bootstrap, topic, "restarted")
    windows_dir = tmp_path / "restarted"

    first = consume(settings, windows_dir, max_windows=1, rule=RULE, progress=False)
    (written,) = read_manifests(windows_dir)
    # Dec 2's B waits at partition 0's offset 1, so a restart reads C, D and E again.
    assert written.offsets == {0: [0, 1], 1: [0, 1]}
    second = consume(settings, windows_dir, max_windows=2, rule=RULE, progress=False)

    assert _windows(windows_dir) == DAYS
    assert [m.window for m in second.windows] == [2, 3]
    assert first.late_rows + second.late_rows == 3
    assert len((windows_dir / DEAD_LETTERS).read_text().splitlines()) == 1
