"""The window rule: which window each record falls in, and when a window closes.

Free of Kafka clients, so it can be tested on its own (tests/ingest/test_window_rule.py) and any
consumer engine can apply it. The rule, written once for every engine (`WindowRule` says which):
- by rows (default): the invoice starting at line `seq` of a replay falls in window `seq // N`, with
  N = the replay's rows / DEFAULT_WINDOWS unless `rows` says otherwise. Invoices are never split,
  so a window holds N rows give or take one invoice;
- by time (`seconds` T): a message falls in window `(timestamp - replay start) // T`, from the
  record timestamps the producer stamped, which Kafka stores with the record;
- by event time (`period` day, week or month, `lateness` L): an invoice falls in the calendar
  period of its InvoiceDate (a day; an ISO week, Monday to Sunday; a calendar month), read as UTC.
A row-or-time window closes once every partition has moved past it (a later message or the replay's
end marker), never on a timer.

An event-time window closes once every partition's watermark has passed its end, never on a timer.
A partition's watermark is the greatest InvoiceDate read from it so far minus L; the replay's end
marker sets it past every window of that replay (and a later replay's message past every window of
the earlier one). An invoice is late when its window's end is not after the watermark of its own
partition as it arrives: it goes to the dead letters (`LateInvoice`), never into a window. That
test needs nothing but the partition's own earlier messages, so it gives the same answer in any
interleaving of the partitions and on every re-read; and an invoice that is not late always finds
its window open, because no window closes before every watermark has passed its end.

Event-time windows are not contiguous in the log: a message of a later period can sit between two
of an earlier one. So a closed window's offsets are where reading resumes: for each partition, the
first message still waiting in an open window (or the end of what was read), and the manifest
records each partition's watermark state there (`frontiers`). A restart seeks to those offsets and
restores those frontiers; a message it reads again is late exactly as before, or belongs to a
window already written (its window is not after the last closed one) and is skipped, or waits for
its window as before. Nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from pipelines.config import DEFAULT_WINDOWS
from pipelines.ingest.messages import EndOfReplay, Invoice, PoisonMessage, decode, invoice_date
from pipelines.ingest.spill import SPILL_BATCH_ROWS, WindowSpill
from pipelines.ingest.window_files import Manifest

END = math.inf  # the local index of an end-of-replay marker: after every window of its replay

# (replay start in epoch ms, replay id, window index within the replay): sorts in stream order.
# For event time the index is the calendar period's number (`period_of`).
WindowKey = tuple[int, str, float]

WINDOW_BY = ("rows", "seconds", "event-time")
PERIODS = ("day", "week", "month")
DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1)
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class WindowRule:
    """Which rule cuts the stream; the defaults are the rows rule with windows of a third."""

    by: str = "rows"
    rows: int = 0  # 0 = the replay's rows / DEFAULT_WINDOWS
    seconds: float = 0.0
    period: str = "day"
    lateness: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.by not in WINDOW_BY:
            raise ValueError(f"window rule by={self.by!r}: expected one of {', '.join(WINDOW_BY)}")
        if self.period not in PERIODS:
            raise ValueError(f"window period {self.period!r}: expected one of {', '.join(PERIODS)}")
        if self.rows < 0 or self.seconds < 0 or self.lateness < timedelta(0):
            raise ValueError("window rows, seconds and lateness must be >= 0")
        if (self.by == "seconds") != (self.seconds > 0):
            raise ValueError("window seconds > 0 goes with by='seconds', and only with it")
        if self.rows and self.by != "rows":
            raise ValueError(f"window rows are for by='rows', not by={self.by!r}")
        if self.lateness and self.by != "event-time":
            raise ValueError(f"a lateness is for by='event-time', not by={self.by!r}")

    @property
    def lateness_ms(self) -> int:
        return self.lateness // timedelta(milliseconds=1)

    def key(self, invoice: Invoice, timestamp_ms: int) -> WindowKey:
        """The window `invoice`, stamped `timestamp_ms` by the producer, falls in."""
        if self.by == "event-time":
            index = period_of(event_ms(invoice.header[1]), self.period)
        elif self.by == "seconds":
            index = (timestamp_ms - invoice.t0) // int(self.seconds * 1000)
        else:
            index = invoice.seq // (self.rows or math.ceil(invoice.total / DEFAULT_WINDOWS))
        return (invoice.t0, invoice.replay, index)

    def passed(self, key: WindowKey, frontier: WindowKey) -> bool:
        """Whether a partition whose frontier is `frontier` has moved past window `key`."""
        if self.by != "event-time":
            return frontier > key
        t0, replay, index = key
        end = _ms(period_bounds(int(index), self.period)[1])
        watermark = (frontier[0], frontier[1], frontier[2] - self.lateness_ms)
        return watermark >= (t0, replay, end)

    def late(self, key: WindowKey, partition: int, seen: WindowKey, rows: int) -> LateInvoice:
        """Event time: the dead letter of an invoice of window `key` that arrived behind its
        partition's frontier `seen`, naming the window and the watermark."""
        start, end = period_bounds(int(key[2]), self.period)
        return LateInvoice(
            f"late invoice: its {self.period} window [{start}, {end}) had closed; "
            f"partition {partition}'s watermark was {_date(seen[2] - self.lateness_ms)} "
            f"(allowed lateness {self.lateness})",
            rows,
        )


DEFAULT_RULE = WindowRule()


def already_written(key: WindowKey) -> PoisonMessage:
    """By rows or seconds: the dead letter of a message whose window was written before it came."""
    return PoisonMessage(f"late message: its window {key[2]} was already written")


def parse_duration(text: str) -> timedelta:
    """'30s', '30m', '6h', '2d' (or '0') as a timedelta; ValueError naming the text otherwise."""
    if text.strip() == "0":
        return timedelta(0)
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 30m, 6h or 2d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def event_ms(text: str) -> int:
    """An InvoiceDate (ISO text) in epoch milliseconds, read as UTC."""
    return (invoice_date(text) - _EPOCH) // timedelta(milliseconds=1)


def period_of(ms: int, period: str) -> int:
    """The number of the calendar period holding epoch millisecond `ms`."""
    day = ms // DAY_MS
    if period == "day":
        return day
    if period == "week":  # 1970-01-01 was a Thursday: weeks start 3 days earlier, on a Monday
        return (day + 3) // 7
    moment = _EPOCH + timedelta(days=day)
    return moment.year * 12 + moment.month - 1


def period_bounds(index: int, period: str) -> tuple[datetime, datetime]:
    """[start, end) of calendar period `index` (see `period_of`)."""
    if period == "day":
        start = _EPOCH + timedelta(days=index)
        return start, start + timedelta(days=1)
    if period == "week":
        start = _EPOCH + timedelta(days=index * 7 - 3)
        return start, start + timedelta(days=7)
    year, month = divmod(index, 12)
    after_year, after_month = divmod(index + 1, 12)
    return datetime(year, month + 1, 1), datetime(after_year, after_month + 1, 1)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _date(ms: float) -> str:
    return "the end of the replay" if ms == END else str(_EPOCH + timedelta(milliseconds=ms))


class LateInvoice(PoisonMessage):
    """An invoice whose event-time window had closed when it arrived; `rows` are its lines."""

    def __init__(self, reason: str, rows: int) -> None:
        super().__init__(reason)
        self.rows = rows


@dataclass
class _Open:
    """A window still open: its rows on their way to disk, and the offsets they came from."""

    spill: WindowSpill
    first: dict[int, int] = field(default_factory=dict)  # partition -> its first offset here
    end: dict[int, int] = field(default_factory=dict)  # partition -> past its last offset here

    def add(self, partition: int, offset: int, invoice: Invoice) -> None:
        self.spill.add(partition, invoice)
        self.first.setdefault(partition, offset)
        self.end[partition] = offset + 1


@dataclass
class ClosedWindow:
    key: WindowKey
    # partition -> [first offset, end offset) of this window, as the manifest records it.
    offsets: dict[int, list[int]]
    rows: int
    # The rows, on disk (or, for a window smaller than a spill batch, in memory) until
    # `batches` reads them in file order; `discard` removes them.
    spill: WindowSpill = field(compare=False, repr=False)
    # Event time only: the window's [start, end) and each partition's frontier at the end offsets.
    bounds: tuple[datetime, datetime] | None = None
    frontiers: dict[int, WindowKey] | None = None

    @property
    def digest(self) -> str:
        """window_files.rows_digest of the window's rows."""
        return self.spill.digest

    @property
    def dates(self) -> tuple[str, str]:
        """The first and last InvoiceDate, as the manifest writes them."""
        first, last = self.spill.dates or (None, None)
        return str(first), str(last)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The window's rows in file order, a bounded batch at a time."""
        return self.spill.batches()

    def discard(self) -> None:
        self.spill.discard()


@dataclass
class WindowBuilder:
    """The windowing logic, free of Kafka clients so that it can be tested on its own. Open
    windows keep their rows in `spill_dir` (pipelines/ingest/spill.py), not in memory."""

    partitions: list[int]
    # Where the next window begins in each partition: the resume position.
    positions: dict[int, int]
    rule: WindowRule = DEFAULT_RULE
    last_closed: WindowKey | None = None
    # Event time: each partition's frontier at `positions`, from the last manifest on a restart.
    resumed_frontiers: dict[int, WindowKey] = field(default_factory=dict)
    spill_dir: Path = field(kw_only=True)
    spill_batch_rows: int = field(default=SPILL_BATCH_ROWS, kw_only=True)
    _pending: dict[WindowKey, _Open] = field(default_factory=dict)
    # partition -> the furthest point read: a window key (rows, seconds), or
    # (replay start, replay, greatest InvoiceDate in ms) (event time).
    _frontier: dict[int, WindowKey] = field(default_factory=dict)
    # Event time: partition -> (offset, frontier after it) of each message read past `positions`.
    _history: dict[int, list[tuple[int, WindowKey]]] = field(default_factory=dict)
    _opened: int = 0  # windows opened so far: names their spill folders

    def __post_init__(self) -> None:
        self._frontier = dict(self.resumed_frontiers)

    def _window(self, key: WindowKey) -> _Open:
        """The open window `key`, opened now if need be."""
        if key not in self._pending:
            self._opened += 1
            folder = self.spill_dir / f"window-{self._opened}"
            self._pending[key] = _Open(WindowSpill(folder, self.spill_batch_rows))
        return self._pending[key]

    def add(self, partition: int, offset: int, timestamp_ms: int, value: bytes | None) -> int:
        """Take one record and return its row count; raise PoisonMessage (the caller
        dead-letters it) if it is unusable."""
        message = decode(value)
        if self.rule.by == "event-time":
            return self._add_by_event_time(partition, offset, timestamp_ms, message)
        rows = 0
        if isinstance(message, EndOfReplay):
            key: WindowKey = (message.t0, message.replay, END)
        else:
            rows = len(message)
            key = self.rule.key(message, timestamp_ms)
            if self.last_closed is not None and key <= self.last_closed:
                raise already_written(key)
            self._window(key).add(partition, offset, message)
        self._frontier[partition] = max(key, self._frontier.get(partition, key))
        return rows

    def _add_by_event_time(
        self, partition: int, offset: int, timestamp_ms: int, message: Invoice | EndOfReplay
    ) -> int:
        if isinstance(message, EndOfReplay):
            self._advance(partition, offset, (message.t0, message.replay, END))
            return 0
        key = self.rule.key(message, timestamp_ms)
        seen = self._frontier.get(partition)
        self._advance(partition, offset, (message.t0, message.replay, event_ms(message.header[1])))
        if seen is not None and self.rule.passed(key, seen):
            raise self.rule.late(key, partition, seen, len(message))
        if self.last_closed is None or key > self.last_closed:
            self._window(key).add(partition, offset, message)
        # else: read again after a restart, and already in a written window.
        return len(message)

    def _advance(self, partition: int, offset: int, point: WindowKey) -> None:
        frontier = max(point, self._frontier.get(partition, point))
        self._frontier[partition] = frontier
        self._history.setdefault(partition, []).append((offset, frontier))

    def reset(self, positions: dict[int, int]) -> None:
        """Forget what was read but not written: after a rebalance it is read again."""
        self.positions = dict(positions)
        self.close()
        self._frontier = dict(self.resumed_frontiers)
        self._history.clear()

    def close(self) -> None:
        """Drop the open windows' files: what they held is read again from Kafka."""
        for window in self._pending.values():
            window.spill.discard()
        self._pending.clear()

    def pop_closed(self) -> ClosedWindow | None:
        """The oldest window every partition has moved past, or None."""
        if not self._pending or len(self._frontier) < len(self.partitions):
            return None
        key = min(self._pending)
        if not all(self.rule.passed(key, self._frontier[p]) for p in self.partitions):
            return None
        window = self._pending.pop(key)
        self.last_closed = key
        bounds = frontiers = None
        if self.rule.by == "event-time":
            offsets = self._resume_past_written()
            bounds = period_bounds(int(key[2]), self.rule.period)
            frontiers = dict(self.resumed_frontiers)
        else:
            offsets = {}
            for partition in self.partitions:
                start = self.positions[partition]
                self.positions[partition] = window.end.get(partition, start)
                offsets[partition] = [start, self.positions[partition]]
        return ClosedWindow(key, offsets, window.spill.rows, window.spill, bounds, frontiers)

    def _resume_past_written(self) -> dict[int, list[int]]:
        """Event time: move each partition's position to its first message still waiting (or
        past everything read) and remember the frontier there; return [old, new) positions."""
        waiting: dict[int, int] = {}
        for window in self._pending.values():
            for partition, first in window.first.items():
                waiting[partition] = min(first, waiting.get(partition, first))
        offsets = {}
        for partition in self.partitions:
            start = self.positions[partition]
            history = self._history.get(partition, [])
            read_to = history[-1][0] + 1 if history else start
            end = waiting.get(partition, read_to)
            before = [frontier for offset, frontier in history if offset < end]
            if before:
                self.resumed_frontiers[partition] = before[-1]
            self._history[partition] = [(o, f) for o, f in history if o >= end]
            self.positions[partition] = end
            offsets[partition] = [start, end]
        return offsets


def manifest_key(manifest: Manifest) -> WindowKey:
    """The key of the window a manifest describes: where a restart resumes the rule."""
    return (manifest.replay_started_ms, manifest.replay, manifest.replay_window)


def frontiers_for_manifest(frontiers: dict[int, WindowKey]) -> dict[int, list]:
    """JSON has no infinity: an ended replay's frontier is written as null."""
    return {
        p: [started_ms, replay, None if point == END else int(point)]
        for p, (started_ms, replay, point) in frontiers.items()
    }


def frontiers_of_manifest(manifest: Manifest) -> dict[int, WindowKey]:
    """The event-time frontiers a manifest records (none for other rules), as the builder's."""
    return {
        p: (started_ms, replay, END if point is None else point)
        for p, (started_ms, replay, point) in (manifest.frontiers or {}).items()
    }


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that choose the window rule, shared by every command that cuts windows."""
    parser.add_argument(
        "--window-by",
        choices=("auto", *WINDOW_BY),
        default="auto",
        help="auto = seconds when --window-seconds is given, else rows",
    )
    parser.add_argument("--window-rows", type=int, default=0, help="0 = a third of the replay")
    parser.add_argument("--window-seconds", type=float, default=0.0, help="cut by record time")
    parser.add_argument(
        "--window-period",
        choices=PERIODS,
        default=DEFAULT_RULE.period,
        help="event time: calendar day, ISO week (from Monday) or month of InvoiceDate",
    )
    parser.add_argument(
        "--allowed-lateness",
        default="0s",
        help="event time: how far behind its partition's newest InvoiceDate an invoice may "
        "arrive, e.g. 30m, 6h, 2d",
    )


def window_rule(args: argparse.Namespace) -> WindowRule:
    """The rule the flags of `add_window_arguments` ask for; ValueError naming the flag."""
    if args.window_rows < 0 or args.window_seconds < 0:
        raise ValueError("--window-rows and --window-seconds must be >= 0")
    if args.window_rows and args.window_seconds:
        raise ValueError("choose one of --window-rows and --window-seconds")
    try:
        lateness = parse_duration(args.allowed_lateness)
    except ValueError as error:
        raise ValueError(f"--allowed-lateness: {error}") from None
    by = args.window_by
    if by == "auto":
        by = "seconds" if args.window_seconds else "rows"
    if by == "seconds" and not args.window_seconds:
        raise ValueError("--window-by seconds needs --window-seconds T > 0")
    if by != "seconds" and args.window_seconds:
        raise ValueError(f"--window-seconds does not go with --window-by {by}")
    if by != "rows" and args.window_rows:
        raise ValueError(f"--window-rows does not go with --window-by {by}")
    if by != "event-time" and (lateness or args.window_period != DEFAULT_RULE.period):
        raise ValueError("--window-period and --allowed-lateness need --window-by event-time")
    return WindowRule(by, args.window_rows, args.window_seconds, args.window_period, lateness)
