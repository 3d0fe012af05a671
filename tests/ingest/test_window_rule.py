"""Unit tests of the window cutting logic, without a broker: the same partitions read in any
interleaving, or resumed from any written window, must give the same windows."""

from __future__ import annotations

import argparse
import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest.messages import PoisonMessage, encode_end, encode_invoice
from pipelines.ingest.window_files import ARROW_SCHEMA
from pipelines.ingest.window_rule import (
    PERIODS,
    ClosedWindow,
    LateInvoice,
    WindowBuilder,
    WindowRule,
    add_window_arguments,
    parse_duration,
    period_bounds,
    period_of,
    window_rule,
)

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def spill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the builders of this module keep their open windows' rows."""
    return tmp_path_factory.mktemp("spill")


def _builder(spill: Path, *args, **options) -> WindowBuilder:
    """A WindowBuilder spilling to a folder of its own."""
    return WindowBuilder(*args, spill_dir=spill / uuid.uuid4().hex, **options)


def _table(window: ClosedWindow) -> pa.Table:
    """A closed window's rows in file order, as its window file holds them."""
    return pa.Table.from_batches(list(window.batches()), ARROW_SCHEMA)


def _invoice_numbers(window: ClosedWindow) -> list[str]:
    """The window's invoices in file order."""
    return list(dict.fromkeys(_table(window)["InvoiceNo"].to_pylist()))


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


def _run(spill, logs, order: list[int], positions=None, last_closed=None, window_rows=0, **options):
    """Feed records one at a time from the partitions `order` lists, collecting windows."""
    partitions = sorted(logs)
    positions = positions or {p: 0 for p in partitions}
    rule = WindowRule(rows=window_rows)
    builder = _builder(spill, partitions, dict(positions), rule, last_closed=last_closed, **options)
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


def test_three_windows_hold_every_row_once_in_file_order(spill):
    logs, total = _stream(invoices=90, partitions=3)
    windows = _run(spill, logs, _round_robin(logs))
    assert len(windows) == 3
    assert sum(w.rows for w in windows) == total
    invoices = [i for w in windows for i in _table(w)["InvoiceNo"].to_pylist()]
    assert invoices == sorted(invoices)  # file order, across partitions
    # Offsets tile each partition from 0 to just past its last data message.
    for partition, log in logs.items():
        spans = [w.offsets[partition] for w in windows]
        assert spans[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] == len(log) - 1  # everything but the end marker


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_interleaving_gives_the_same_windows(spill, rng: random.Random):
    logs, _ = _stream(invoices=40, partitions=3)
    order = [p for p, log in logs.items() for _ in log]
    rng.shuffle(order)
    expected = _run(spill, logs, _round_robin(logs))
    got = _run(spill, logs, order)
    assert got == expected
    assert list(map(_table, got)) == list(map(_table, expected))


@settings(max_examples=5, deadline=None)
@given(st.randoms(use_true_random=False))
def test_windows_spilled_to_disk_hold_the_same_rows_in_the_same_order(spill, rng: random.Random):
    logs, _ = _stream(invoices=40, partitions=3)
    order = [p for p, log in logs.items() for _ in log]
    rng.shuffle(order)
    expected = _run(spill, logs, _round_robin(logs))
    got = _run(spill, logs, order, spill_batch_rows=7)  # 7 rows at a time, from 3 partitions
    assert got == expected
    assert list(map(_table, got)) == list(map(_table, expected))


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=0, max_value=2))
def test_resuming_after_any_window_gives_the_same_later_windows(
    spill, rng: random.Random, cut: int
):
    logs, _ = _stream(invoices=40, partitions=3)
    expected = _run(spill, logs, _round_robin(logs))
    resumed_from = expected[cut]
    positions = {p: end for p, (_, end) in resumed_from.offsets.items()}
    order = [p for p, log in logs.items() for _ in log]
    rng.shuffle(order)
    later = _run(spill, logs, order, positions=positions, last_closed=resumed_from.key)
    assert later == expected[cut + 1 :]
    assert list(map(_table, later)) == list(map(_table, expected[cut + 1 :]))


def test_a_window_waits_for_every_partition(spill):
    logs, _ = _stream(invoices=30, partitions=2)
    only_partition_0 = [0] * len(logs[0])
    assert _run(spill, logs, only_partition_0) == []


def test_window_rows_sets_the_size(spill):
    logs, total = _stream(invoices=60, partitions=3)
    windows = _run(spill, logs, _round_robin(logs), window_rows=20)
    assert len(windows) == -(-total // 20)
    assert all(w.rows <= 20 + 2 for w in windows)


def test_poison_and_late_messages_are_refused_with_a_reason(spill):
    builder = _builder(spill, [0], {0: 0}, last_closed=(T0, "r1", 1))
    with pytest.raises(PoisonMessage, match="not JSON"):
        builder.add(0, 0, T0, b"{not json")
    header = ["1", "2010-12-01 08:26:00", None, "UK"]
    with pytest.raises(PoisonMessage, match="line 1: Quantity 'x'"):
        lines = [["A", None, 1, 1.0], ["A", None, "x", 1.0]]
        builder.add(0, 1, T0, encode_invoice("r1", 0, 9, T0, header, lines))
    with pytest.raises(PoisonMessage, match="late message"):
        builder.add(0, 2, T0, _invoice("1", 1))


def test_time_windows_follow_record_timestamps(spill):
    partitions = [0, 1]
    builder = _builder(spill, partitions, {0: 0, 1: 0}, WindowRule("seconds", seconds=10))
    for offset, seconds in enumerate([0, 5, 12, 25]):
        for p in partitions:
            value = _invoice(f"{offset}{p}", 1, seq=offset * 2 + p, total=100)
            builder.add(p, offset, T0 + seconds * 1000, value)
    closed = [builder.pop_closed(), builder.pop_closed(), builder.pop_closed()]
    assert [w.rows for w in closed[:2]] == [4, 2]
    assert closed[2] is None  # the window of second 25 has not been passed yet


# Event time. The oracle is pandas' calendar periods, not the module's own arithmetic.
PANDAS_FREQ = {"day": "D", "week": "W-SUN", "month": "M"}  # W-SUN: weeks ending on Sunday
DAY_ONE = datetime(2010, 12, 1)  # a Wednesday


def _period(date: datetime, period: str) -> pd.Period:
    return pd.Timestamp(date).to_period(PANDAS_FREQ[period])


def _period_end(date: datetime, period: str) -> pd.Timestamp:
    return _period(date, period).end_time + pd.Timedelta(1, "ns")


def _dated_logs(invoices: list[tuple[int, int]], partitions: int):
    """Per-partition records of one replay: invoice i goes to partition invoices[i][0], dated
    invoices[i][1] hours after DAY_ONE. Returns the logs, each invoice's date and (partition,
    offset)."""
    logs: dict[int, list[tuple[int, int, bytes]]] = {p: [] for p in range(partitions)}
    dates, places = [], []
    for i, (partition, hours) in enumerate(invoices):
        date = DAY_ONE + timedelta(hours=hours)
        header = [str(i), date.isoformat(sep=" "), "17850", "United Kingdom"]
        value = encode_invoice("r1", i, len(invoices), T0, header, [["85123A", "HEART", 1, 2.5]])
        log = logs[partition]
        dates.append(date)
        places.append((partition, len(log)))
        log.append((len(log), T0 + i, value))
    for log in logs.values():
        log.append((len(log), T0 + len(invoices), encode_end("r1", len(invoices), T0)))
    return logs, dates, places


def _expected_late(dates, places, rule: WindowRule) -> set[int]:
    """The invoices beyond the allowed lateness: their period ends at or before the greatest
    date read before them from their own partition, minus the lateness."""
    late, newest = set(), {}
    for i in sorted(range(len(dates)), key=lambda i: places[i]):  # each partition in log order
        partition, date = places[i][0], dates[i]
        seen = newest.get(partition)
        if seen is not None and _period_end(date, rule.period) <= seen - rule.lateness:
            late.add(i)
        newest[partition] = max(date, seen or date)
    return late


def _feed(builder: WindowBuilder, logs, order: list[int], cursors: dict[int, int]):
    """Feed the partitions `order` lists from `cursors` on; return the windows and late places."""
    windows, late = [], set()
    for partition in order:
        if cursors[partition] >= len(logs[partition]):
            continue
        offset, timestamp, value = logs[partition][cursors[partition]]
        cursors[partition] += 1
        try:
            builder.add(partition, offset, timestamp, value)
        except LateInvoice:
            late.add((partition, offset))
        while closed := builder.pop_closed():
            windows.append(closed)
    return windows, late


@settings(max_examples=150, deadline=None)
@given(
    invoices=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 24 * 70)), min_size=1, max_size=40
    ),
    period=st.sampled_from(PERIODS),
    lateness_hours=st.sampled_from([0, 5, 24, 24 * 9]),
    rng=st.randoms(use_true_random=False),
    crash_at=st.floats(0, 1),
)
def test_event_time_every_row_lands_once_in_its_window_or_is_late(
    spill, invoices, period, lateness_hours, rng: random.Random, crash_at: float
):
    """Read in any interleaving, killed at any point and resumed from the last window written
    (its offsets and frontiers, as its manifest keeps them) in another interleaving."""
    rule = WindowRule("event-time", period=period, lateness=timedelta(hours=lateness_hours))
    logs, dates, places = _dated_logs(invoices, partitions=3)
    order = [p for p, log in logs.items() for _ in log]
    rng.shuffle(order)
    start = {p: 0 for p in logs}
    first = _builder(spill, sorted(logs), dict(start), rule)
    written, late = _feed(first, logs, order[: int(crash_at * len(order))], dict(start))

    last = written[-1] if written else None
    positions = {p: end for p, (_, end) in last.offsets.items()} if last else start
    resumed = _builder(
        spill,
        sorted(logs),
        dict(positions),
        rule,
        last_closed=last.key if last else None,
        resumed_frontiers=dict(last.frontiers) if last else {},
    )
    rng.shuffle(order)
    later, late_again = _feed(resumed, logs, order, dict(positions))
    windows = written + later

    expected_late = _expected_late(dates, places, rule)
    assert late | late_again == {places[i] for i in expected_late}
    in_windows = [int(number) for w in windows for number in _invoice_numbers(w)]
    assert sorted(in_windows) == sorted(set(range(len(invoices))) - expected_late)
    periods = []
    for window in windows:  # one window per period, holding only that period's invoices
        (held,) = {_period(dates[int(i)], period) for i in _invoice_numbers(window)}
        assert window.bounds == (held.start_time, held.end_time + pd.Timedelta(1, "ns"))
        periods.append(held)
    assert periods == sorted(set(periods))  # closed in order, never twice


def test_a_restart_skips_what_it_reads_again_from_a_written_window(spill):
    """Partition 0 holds Dec 2 then Dec 1: the Dec 1 window is written while Dec 2 waits, so a
    restart reads Dec 1 again from offset 1 and must not write it twice."""
    logs, _, _ = _dated_logs([(0, 34), (0, 10), (1, 24 * 3), (0, 24 * 4)], partitions=2)
    rule = WindowRule("event-time", lateness=timedelta(days=2))
    builder = _builder(spill, [0, 1], {0: 0, 1: 0}, rule)
    (dec_1,), _ = _feed(builder, logs, [0, 0, 1, 0], {0: 0, 1: 0})
    assert _invoice_numbers(dec_1) == ["1"]
    assert dec_1.offsets == {0: [0, 0], 1: [0, 0]}  # Dec 2 and Dec 4 wait at offset 0

    resumed = _builder(spill, [0, 1], {0: 0, 1: 0}, rule, dec_1.key, dict(dec_1.frontiers))
    later, late = _feed(resumed, logs, [0, 0, 0, 0, 1, 1], {0: 0, 1: 0})
    assert late == set()
    assert [_invoice_numbers(w) for w in later] == [["0"], ["2"], ["3"]]


def test_a_late_invoice_is_refused_naming_its_window_and_the_watermark(spill):
    logs, _, _ = _dated_logs([(0, 24 * 3), (0, 0)], partitions=1)
    rule = WindowRule("event-time", lateness=timedelta(hours=6))
    builder = _builder(spill, [0], {0: 0}, rule)
    offset, timestamp, value = logs[0][0]
    builder.add(0, offset, timestamp, value)
    offset, timestamp, value = logs[0][1]
    with pytest.raises(LateInvoice) as late:
        builder.add(0, offset, timestamp, value)
    assert late.value.rows == 1
    assert "day window [2010-12-01 00:00:00, 2010-12-02 00:00:00)" in str(late.value)
    assert "watermark was 2010-12-03 18:00:00" in str(late.value)


@pytest.mark.parametrize(
    ("date", "period", "start", "end"),
    [
        ("2010-12-05 23:59:59", "day", "2010-12-05", "2010-12-06"),
        ("2010-12-05 23:59:59", "week", "2010-11-29", "2010-12-06"),  # a Sunday: Monday's week
        ("2010-12-06 00:00:00", "week", "2010-12-06", "2010-12-13"),
        ("2011-01-01 00:00:00", "week", "2010-12-27", "2011-01-03"),  # ISO week 52 of 2010
        ("2010-12-31 12:00:00", "month", "2010-12-01", "2011-01-01"),
        ("2011-02-28 12:00:00", "month", "2011-02-01", "2011-03-01"),
    ],
)
def test_calendar_periods(date: str, period: str, start: str, end: str):
    ms = (datetime.fromisoformat(date) - datetime(1970, 1, 1)) // timedelta(milliseconds=1)
    bounds = period_bounds(period_of(ms, period), period)
    assert bounds == (datetime.fromisoformat(start), datetime.fromisoformat(end))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("6h", timedelta(hours=6)),
        ("2d", timedelta(days=2)),
    ],
)
def test_durations(text: str, expected: timedelta):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "6", "-1h", "1.5h", "6 hours", "2w", "h"])
def test_bad_durations_are_refused(text: str):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def _rule_from(argv: list[str]) -> WindowRule:
    parser = argparse.ArgumentParser()
    add_window_arguments(parser)
    return window_rule(parser.parse_args(argv))


def test_window_flags_keep_todays_rules_and_add_event_time():
    assert _rule_from([]) == WindowRule()
    assert _rule_from(["--window-rows", "500"]) == WindowRule(rows=500)
    assert _rule_from(["--window-seconds", "10"]) == WindowRule("seconds", seconds=10)
    argv = ["--window-by", "event-time", "--window-period", "week", "--allowed-lateness", "2d"]
    assert _rule_from(argv) == WindowRule("event-time", period="week", lateness=timedelta(days=2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window-rows", "5", "--window-seconds", "2"], "one of --window-rows and"),
        (["--window-rows", "-5"], "must be >= 0"),
        (["--window-by", "rows", "--window-seconds", "2"], "--window-seconds does not go"),
        (["--window-by", "seconds"], "needs --window-seconds"),
        (["--window-by", "event-time", "--window-rows", "5"], "--window-rows does not go"),
        (["--window-period", "week"], "need --window-by event-time"),
        (["--allowed-lateness", "1h"], "need --window-by event-time"),
        (["--window-by", "event-time", "--allowed-lateness", "soon"], "--allowed-lateness: 'soon'"),
    ],
)
def test_contradictory_or_bad_window_flags_are_named(argv: list[str], message: str):
    with pytest.raises(ValueError, match=message):
        _rule_from(argv)
