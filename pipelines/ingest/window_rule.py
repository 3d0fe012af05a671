"""The window rule: which window each record falls in, and when a window closes.

Free of Kafka clients, so it can be tested on its own (tests/ingest/test_window_rule.py) and any
consumer engine can apply it. The rule, written once for every engine:
- by rows (default): the invoice starting at line `seq` of a replay falls in window `seq // N`, with
  N = the replay's rows / DEFAULT_WINDOWS unless `window_rows` says otherwise. Invoices are never
  split, so a window holds N rows give or take one invoice;
- by time (`window_seconds` T): a message falls in window `(timestamp - replay start) // T`, from
  the record timestamps the producer stamped, which Kafka stores with the record.
A window closes once every partition has moved past it (a later message or the replay's end
marker), never on a timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import repeat

import pandas as pd

from pipelines.config import DEFAULT_WINDOWS
from pipelines.data.schema import COLUMNS
from pipelines.ingest.messages import (
    HEADER_FIELDS,
    LINE_FIELDS,
    EndOfReplay,
    Invoice,
    PoisonMessage,
    decode,
)

END = math.inf  # the local index of an end-of-replay marker: after every window of its replay

# (replay start in epoch ms, replay id, window index within the replay): sorts in stream order.
WindowKey = tuple[int, str, float]


@dataclass
class _Pending:
    partition: int
    offset: int
    invoice: Invoice


@dataclass
class ClosedWindow:
    key: WindowKey
    invoices: list[Invoice]  # in file order
    # partition -> [first offset, end offset) of this window, as the manifest records it.
    offsets: dict[int, list[int]]

    def __len__(self) -> int:
        return sum(map(len, self.invoices))

    def frame(self) -> pd.DataFrame:
        """The window's rows in the canonical schema, each invoice header repeated per line."""
        columns: dict[str, list] = {name: [] for name in COLUMNS}
        for invoice in self.invoices:
            for name, value in zip(HEADER_FIELDS, invoice.header, strict=True):
                columns[name].extend(repeat(value, len(invoice)))
            for name, values in zip(LINE_FIELDS, invoice.columns, strict=True):
                columns[name].extend(values)
        frame = pd.DataFrame(columns, columns=list(COLUMNS))
        frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"], format="ISO8601")
        frame["Quantity"] = frame["Quantity"].astype("int64")
        frame["UnitPrice"] = frame["UnitPrice"].astype("float64")
        return frame


@dataclass
class WindowBuilder:
    """The windowing logic, free of Kafka clients so that it can be tested on its own."""

    partitions: list[int]
    # Where the next window begins in each partition: the resume position.
    positions: dict[int, int]
    window_rows: int = 0
    window_seconds: float = 0.0
    last_closed: WindowKey | None = None
    _pending: dict[WindowKey, list[_Pending]] = field(default_factory=dict)
    _frontier: dict[int, WindowKey] = field(default_factory=dict)

    def key_of(self, seq: int, total: int, t0: int, timestamp_ms: int, replay: str) -> WindowKey:
        if self.window_seconds > 0:
            return (t0, replay, (timestamp_ms - t0) // int(self.window_seconds * 1000))
        size = self.window_rows or math.ceil(total / DEFAULT_WINDOWS)
        return (t0, replay, seq // size)

    def add(self, partition: int, offset: int, timestamp_ms: int, value: bytes | None) -> int:
        """Take one record and return its row count; raise PoisonMessage (the caller
        dead-letters it) if it is unusable."""
        message = decode(value)
        rows = 0
        if isinstance(message, EndOfReplay):
            key: WindowKey = (message.t0, message.replay, END)
        else:
            rows = len(message)
            key = self.key_of(message.seq, message.total, message.t0, timestamp_ms, message.replay)
            if self.last_closed is not None and key <= self.last_closed:
                raise PoisonMessage(f"late message: its window {key[2]} was already written")
            self._pending.setdefault(key, []).append(_Pending(partition, offset, message))
        self._frontier[partition] = max(key, self._frontier.get(partition, key))
        return rows

    def reset(self, positions: dict[int, int]) -> None:
        """Forget what was read but not written: after a rebalance it is read again."""
        self.positions = dict(positions)
        self._pending.clear()
        self._frontier.clear()

    def pop_closed(self) -> ClosedWindow | None:
        """The oldest window every partition has moved past, or None."""
        if not self._pending or len(self._frontier) < len(self.partitions):
            return None
        key = min(self._pending)
        if any(self._frontier[p] <= key for p in self.partitions):
            return None
        messages = sorted(self._pending.pop(key), key=lambda m: m.invoice.seq)
        offsets = {}
        for partition in self.partitions:
            start = self.positions[partition]
            ends = [m.offset + 1 for m in messages if m.partition == partition]
            self.positions[partition] = max(ends, default=start)
            offsets[partition] = [start, self.positions[partition]]
        self.last_closed = key
        return ClosedWindow(key, [m.invoice for m in messages], offsets)
