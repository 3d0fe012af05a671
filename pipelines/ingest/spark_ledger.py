"""The Spark engine's window state, kept by the driver: the window rule applied to messages'
metadata, saved after every micro-batch.

It follows the rule (pipelines/ingest/window_rule.py) message by message, as `WindowBuilder` does
for the kafka-python engine, and makes the same decisions with the rule's own functions: which
window a message goes to, which messages are dead letters (`already_written`, `WindowRule.late`),
when a window closes (`WindowRule.passed` for every partition), and what its manifest's offsets
and frontiers are. What differs is what it keeps of an open window: not its rows, which wait on
disk in the staged micro-batches (pipelines/ingest/spark_records.py), but their count, digest and
date range, the batches that hold them, and per partition one offset. So the driver's memory
grows with the number of open windows and partitions, never with a window's size.

Saved as JSON after each micro-batch (`batch` says which), atomically: Spark's checkpoint says
which batches are done, and a batch that was running when the driver died is run again on the
same records, from this state, to the same decisions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from pipelines.ingest.window_files import (
    Manifest,
    atomic_write_text,
    combine_digests,
    digest_text,
)
from pipelines.ingest.window_rule import (
    END,
    WindowKey,
    WindowRule,
    already_written,
    frontiers_for_manifest,
    frontiers_of_manifest,
    manifest_key,
    period_bounds,
)

_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Message:
    """A message as the executors describe it (a MESSAGES row)."""

    partition: int
    offset: int
    kind: str  # invoice, end or poison
    t0: int | None = None
    replay: str | None = None
    window: int | None = None  # invoices: the window's index within the replay
    event_ms: int | None = None  # event time: the invoice's date
    rows: int = 0
    digest: str | None = None
    date_us: int | None = None  # the invoice's date, in microseconds
    reason: str | None = None  # poison: why
    value: bytes | None = None  # poison: the record's value


def messages(table: pa.Table) -> list[Message]:
    """The messages of MESSAGES rows, each partition's in offset order: the order the rule takes
    them in."""
    dates = table.column("InvoiceDate").cast(pa.int64())
    table = table.append_column("date_us", dates)
    table = table.sort_by([("partition", "ascending"), ("offset", "ascending")])
    columns = [table.column(f.name).to_pylist() for f in fields(Message)]
    return [Message(*row) for row in zip(*columns, strict=True)]


@dataclass(frozen=True)
class Rejected:
    """A message that goes to the dead letters instead of a window."""

    reason: str
    late_rows: int = 0  # event time: the rows of a late invoice


@dataclass
class OpenWindow:
    """What a manifest needs of a window not closed yet, and where its rows wait."""

    rows: int = 0
    digest: str = digest_text(0)
    first_us: int | None = None
    last_us: int | None = None
    # By rows or seconds: partition -> offset past the window's last message there.
    ends: dict[int, int] = field(default_factory=dict)
    # Event time: partition -> [offset of the window's first message there, that partition's
    # frontier before it (None: none yet)]: where reading resumes while the window waits.
    waiting: dict[int, list] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)  # the staged micro-batches holding its rows

    def add(self, message: Message, batch: int) -> None:
        """Count an invoice of micro-batch `batch` in (each partition's in offset order)."""
        self.rows += message.rows
        self.digest = combine_digests([self.digest, message.digest])
        date = message.date_us
        self.first_us = date if self.first_us is None else min(date, self.first_us)
        self.last_us = date if self.last_us is None else max(date, self.last_us)
        self.ends[message.partition] = message.offset + 1
        if batch not in self.batches:
            self.batches.append(batch)


@dataclass(frozen=True)
class ReadyWindow:
    """A window every partition has moved past: its manifest, and where its rows are."""

    key: WindowKey
    manifest: Manifest
    batches: list[int]
    excluded: list[tuple[int, int]]  # (partition, offset) of late invoices staged under its key


@dataclass
class WindowLedger:
    """The rule's state between micro-batches (see the module's docstring)."""

    topic: str
    partitions: list[int]
    rule: WindowRule
    positions: dict[int, int]  # where the next window begins (by event time: resumes)
    batch: int = -1  # the last micro-batch applied; -1: none
    next_window: int = 1
    last_closed: WindowKey | None = None
    # partition -> the furthest point read: a window key (rows, seconds), or (replay start,
    # replay, greatest InvoiceDate in ms) (event time).
    frontier: dict[int, WindowKey] = field(default_factory=dict)
    # Event time: each partition's frontier at `positions`, and the offset past the last message
    # that moved its frontier.
    resumed: dict[int, WindowKey] = field(default_factory=dict)
    advanced: dict[int, int] = field(default_factory=dict)
    open: dict[WindowKey, OpenWindow] = field(default_factory=dict)
    # Event time: late invoices by window, staged under that window's key but never in it.
    late: dict[WindowKey, list[tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        topic: str,
        partitions: list[int],
        rule: WindowRule,
        beginnings: dict[int, int],
        last: Manifest | None,
    ) -> WindowLedger:
        """The state where the last manifest leaves the stream, as the kafka-python engine
        resumes: from its offsets and frontiers; partitions it does not name from `beginnings`."""
        positions = dict(beginnings)
        if last is None:
            return cls(topic, list(partitions), rule, positions)
        positions |= {p: end for p, (_, end) in last.offsets.items()}
        frontiers = frontiers_of_manifest(last)
        return cls(
            topic,
            list(partitions),
            rule,
            positions,
            next_window=last.window + 1,
            last_closed=manifest_key(last),
            frontier=dict(frontiers),
            resumed=dict(frontiers),
        )

    def take(self, message: Message, batch: int) -> Rejected | None:
        """Apply the rule to one message of micro-batch `batch`, each partition's messages in
        offset order; a Rejected message goes to the dead letters."""
        if message.kind == "poison":
            return Rejected(message.reason or "unusable message")
        p = message.partition
        if self.rule.by == "event-time":
            return self._take_by_event_time(message, batch)
        if message.kind == "end":
            key: WindowKey = (message.t0, message.replay, END)
        else:
            key = (message.t0, message.replay, message.window)
            if self.last_closed is not None and key <= self.last_closed:
                return Rejected(str(already_written(key)))
            self.open.setdefault(key, OpenWindow()).add(message, batch)
        self.frontier[p] = max(key, self.frontier.get(p, key))
        return None

    def _take_by_event_time(self, message: Message, batch: int) -> Rejected | None:
        p = message.partition
        seen = self.frontier.get(p)
        if message.kind == "end":
            self._advance(p, message.offset, (message.t0, message.replay, END))
            return None
        key = (message.t0, message.replay, message.window)
        self._advance(p, message.offset, (message.t0, message.replay, message.event_ms))
        written = self.last_closed is not None and key <= self.last_closed
        if seen is not None and self.rule.passed(key, seen):
            if not written:  # its rows are staged under a window still to be written
                self.late.setdefault(key, []).append((p, message.offset))
            late = self.rule.late(key, p, seen, message.rows)
            return Rejected(str(late), late.rows)
        if not written:
            window = self.open.setdefault(key, OpenWindow())
            window.add(message, batch)
            window.waiting.setdefault(p, [message.offset, _key_json(seen)])
        # else: read again after a restart from a manifest, and already in a written window.
        return None

    def _advance(self, partition: int, offset: int, point: WindowKey) -> None:
        self.frontier[partition] = max(point, self.frontier.get(partition, point))
        self.advanced[partition] = offset + 1

    def pop_closed(self) -> ReadyWindow | None:
        """The oldest window every partition has moved past, with its manifest, or None."""
        if not self.open or len(self.frontier) < len(self.partitions):
            return None
        key = min(self.open)
        if not all(self.rule.passed(key, self.frontier[p]) for p in self.partitions):
            return None
        window = self.open.pop(key)
        excluded = self.late.pop(key, [])
        self.late = {k: v for k, v in self.late.items() if k > key}  # never written again
        self.last_closed = key
        t0, replay, index = key
        manifest = Manifest(
            window=self.next_window,
            topic=self.topic,
            offsets=self._resume_past(window),
            rows=window.rows,
            digest=window.digest,
            first_invoice_date=_date_text(window.first_us),
            last_invoice_date=_date_text(window.last_us),
            replay=replay,
            replay_window=int(index),
            replay_started_ms=t0,
        )
        if self.rule.by == "event-time":
            start, end = period_bounds(int(index), self.rule.period)
            manifest.window_start, manifest.window_end = str(start), str(end)
            manifest.frontiers = frontiers_for_manifest(self.resumed)
        self.next_window += 1
        return ReadyWindow(key, manifest, sorted(window.batches), excluded)

    def _resume_past(self, window: OpenWindow) -> dict[int, list[int]]:
        """Move each partition's position past the closed window and return [old, new).

        By rows or seconds: to just past the window's last message there. By event time: to
        the first message still waiting in an open window (or past everything read), with the
        frontier there, as WindowBuilder does."""
        offsets = {}
        for p in self.partitions:
            start = self.positions[p]
            if self.rule.by != "event-time":
                end = window.ends.get(p, start)
            else:
                waiting = [w.waiting[p] for w in self.open.values() if p in w.waiting]
                if waiting:
                    end, before = min(waiting, key=lambda w: w[0])
                    if before is not None:
                        self.resumed[p] = _key_of_json(before)
                else:
                    end = max(start, self.advanced.get(p, start))
                    if end > start:
                        self.resumed[p] = self.frontier[p]
            self.positions[p] = end
            offsets[p] = [start, end]
        return offsets

    def check(self, topic: str, partitions: list[int], rule: WindowRule) -> None:
        """ValueError unless this state was made for the same topic, partitions and rule."""
        mine = (self.topic, self.partitions, self.rule)
        if mine != (topic, partitions, rule):
            raise ValueError(
                f"the Spark engine's checkpoint cuts topic {self.topic!r} (partitions "
                f"{self.partitions}) by {_rule_text(self.rule)}; this run asks topic {topic!r} "
                f"(partitions {partitions}) by {_rule_text(rule)}. Use the same flags, or "
                "another --output-dir"
            )

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self._to_json(), sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> WindowLedger:
        return cls._from_json(json.loads(path.read_text()))

    def _to_json(self) -> dict:
        rule = asdict(self.rule) | {"lateness": self.rule.lateness.total_seconds()}
        return {
            "topic": self.topic,
            "partitions": self.partitions,
            "rule": rule,
            "positions": self.positions,
            "batch": self.batch,
            "next_window": self.next_window,
            "last_closed": _key_json(self.last_closed),
            "frontier": {p: _key_json(k) for p, k in self.frontier.items()},
            "resumed": {p: _key_json(k) for p, k in self.resumed.items()},
            "advanced": self.advanced,
            "open": [[_key_json(k), asdict(w)] for k, w in self.open.items()],
            "late": [[_key_json(k), v] for k, v in self.late.items()],
        }

    @classmethod
    def _from_json(cls, raw: dict) -> WindowLedger:
        def by_partition(values: dict) -> dict[int, object]:
            return {int(p): v for p, v in values.items()}

        rule = raw["rule"] | {"lateness": timedelta(seconds=raw["rule"]["lateness"])}
        windows = {}
        for key, window in raw["open"]:
            window["ends"] = by_partition(window["ends"])
            window["waiting"] = by_partition(window["waiting"])
            windows[_key_of_json(key)] = OpenWindow(**window)
        return cls(
            topic=raw["topic"],
            partitions=raw["partitions"],
            rule=WindowRule(**rule),
            positions=by_partition(raw["positions"]),
            batch=raw["batch"],
            next_window=raw["next_window"],
            last_closed=_key_of_json(raw["last_closed"]),
            frontier={p: _key_of_json(k) for p, k in by_partition(raw["frontier"]).items()},
            resumed={p: _key_of_json(k) for p, k in by_partition(raw["resumed"]).items()},
            advanced=by_partition(raw["advanced"]),
            open=windows,
            late={_key_of_json(k): [tuple(pl) for pl in v] for k, v in raw["late"]},
        )


def _key_json(key: WindowKey | None) -> list | None:
    """A window key or frontier in JSON, which has no infinity: END is written as null."""
    if key is None:
        return None
    t0, replay, point = key
    return [t0, replay, None if point == END else point]


def _key_of_json(raw: list | None) -> WindowKey | None:
    if raw is None:
        return None
    t0, replay, point = raw
    return (t0, replay, END if point is None else point)


def _date_text(microseconds: int | None) -> str | None:
    """A date as the kafka-python engine writes it in a manifest (str of a datetime)."""
    return None if microseconds is None else str(_EPOCH + timedelta(microseconds=microseconds))


def _rule_text(rule: WindowRule) -> str:
    if rule.by == "rows":
        return f"rows ({rule.rows or 'a third of the replay'} per window)"
    if rule.by == "seconds":
        return f"seconds ({rule.seconds:g} per window)"
    return f"event time ({rule.period}, allowed lateness {rule.lateness})"
