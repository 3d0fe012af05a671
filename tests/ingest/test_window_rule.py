"""Unit tests of the window cutting logic, without a broker: the same partitions read in any
interleaving, or resumed from any written window, must give the same windows."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest.messages import PoisonMessage, encode_end, encode_invoice
from pipelines.ingest.window_rule import WindowBuilder

T0 = 1_700_000_000_000


def _invoice(number: str, lines: int, replay: str = "r1", seq: int = 0, total: int = 9) -> bytes:
    header = [number, "2010-12-01 08:26:00", "17850", "United Kingdom"]
    body = [["85123A", "HEART", quantity, 2.55] for quantity in range(1, lines + 1)]
    return encode_invoice(replay, seq, total, T0, header, body)


def _stream(invoices: int, partitions: int, replay: str = "r1", t0: int = T0):
    """Per-partition record lists (offset, timestamp, value) of one replay, keyed like Kafka."""
    logs: dict[int, list[tuple[int, int, bytes]]] = {p: [] for p in range(partitions)}
    seq = 0
    total = sum(1 + i % 3 for i in range(invoices))
    for i in range(invoices):
        lines = 1 + i % 3
        partition = hash(str(i)) % partitions
        log = logs[partition]
        value = _invoice(f"{536000 + i}", lines, replay, seq, total)
        log.append((len(log), t0 + seq, value))
        seq += lines
    for log in logs.values():
        log.append((len(log), t0 + seq, encode_end(replay, total, t0)))
    return logs, total


def _run(logs, order: list[int], positions=None, last_closed=None, window_rows=0):
    """Feed records one at a time from the partitions `order` lists, collecting windows."""
    partitions = sorted(logs)
    positions = positions or {p: 0 for p in partitions}
    builder = WindowBuilder(partitions, dict(positions), window_rows, last_closed=last_closed)
    cursors = dict(positions)
    windows = []
    for partition in order:
        if cursors[partition] >= len(logs[partition]):
            continue
        offset, timestamp, value = logs[partition][cursors[partition]]
        cursors[partition] += 1
        builder.add(partition, offset, timestamp, value)
        while closed := builder.pop_closed():
            windows.append(closed)
    return windows


def _round_robin(logs) -> list[int]:
    return [p for _ in range(max(map(len, logs.values()))) for p in sorted(logs)]


def test_three_windows_hold_every_row_once_in_file_order():
    logs, total = _stream(invoices=90, partitions=3)
    windows = _run(logs, _round_robin(logs))
    assert len(windows) == 3
    assert sum(map(len, windows)) == total
    invoices = [i for w in windows for i in w.frame()["InvoiceNo"]]
    assert invoices == sorted(invoices)  # file order, across partitions
    # Offsets tile each partition from 0 to just past its last data message.
    for partition, log in logs.items():
        spans = [w.offsets[partition] for w in windows]
        assert spans[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] == len(log) - 1  # everything but the end marker


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_interleaving_gives_the_same_windows(rng: random.Random):
    logs, _ = _stream(invoices=40, partitions=3)
    order = [p for p, log in logs.items() for _ in log]
    rng.shuffle(order)
    expected = _run(logs, _round_robin(logs))
    assert _run(logs, order) == expected


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=0, max_value=2))
def test_resuming_after_any_window_gives_the_same_later_windows(rng: random.Random, cut: int):
    logs, _ = _stream(invoices=40, partitions=3)
    expected = _run(logs, _round_robin(logs))
    resumed_from = expected[cut]
    positions = {p: end for p, (_, end) in resumed_from.offsets.items()}
    order = [p for p, log in logs.items() for _ in log]
    rng.shuffle(order)
    later = _run(logs, order, positions=positions, last_closed=resumed_from.key)
    assert later == expected[cut + 1 :]


def test_a_window_waits_for_every_partition():
    logs, _ = _stream(invoices=30, partitions=2)
    only_partition_0 = [0] * len(logs[0])
    assert _run(logs, only_partition_0) == []


def test_window_rows_sets_the_size():
    logs, total = _stream(invoices=60, partitions=3)
    windows = _run(logs, _round_robin(logs), window_rows=20)
    assert len(windows) == -(-total // 20)
    assert all(len(w) <= 20 + 2 for w in windows)


def test_poison_and_late_messages_are_refused_with_a_reason():
    builder = WindowBuilder([0], {0: 0}, last_closed=(T0, "r1", 1))
    with pytest.raises(PoisonMessage, match="not JSON"):
        builder.add(0, 0, T0, b"{not json")
    header = ["1", "2010-12-01 08:26:00", None, "UK"]
    with pytest.raises(PoisonMessage, match="line 1: Quantity 'x'"):
        lines = [["A", None, 1, 1.0], ["A", None, "x", 1.0]]
        builder.add(0, 1, T0, encode_invoice("r1", 0, 9, T0, header, lines))
    with pytest.raises(PoisonMessage, match="late message"):
        builder.add(0, 2, T0, _invoice("1", 1))


def test_time_windows_follow_record_timestamps():
    partitions = [0, 1]
    builder = WindowBuilder(partitions, {0: 0, 1: 0}, window_seconds=10)
    for offset, seconds in enumerate([0, 5, 12, 25]):
        for p in partitions:
            value = _invoice(f"{offset}{p}", 1, seq=offset * 2 + p, total=100)
            builder.add(p, offset, T0 + seconds * 1000, value)
    closed = [builder.pop_closed(), builder.pop_closed(), builder.pop_closed()]
    assert [len(w) for w in closed[:2]] == [4, 2]
    assert closed[2] is None  # the window of second 25 has not been passed yet
