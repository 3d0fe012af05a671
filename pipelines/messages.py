"""The Kafka message layout (schema version 1) shared by the producer and the consumer.

One message is one invoice: all its lines, in file order. An invoice is the natural unit of a retail
transaction and never straddles two windows, and ~21 lines per message keep per-message overhead
low enough for 100,000 rows/s. The key is the InvoiceNo, so an invoice's messages keep their order
within a partition.

Value, JSON:
    {"v": 1, "type": "rows", "replay": "<id>", "seq": <index of the first line in the replay>,
     "total": <lines in the replay>, "t0": <replay start, epoch ms>,
     "rows": [[InvoiceNo, StockCode, Description, Quantity, "YYYY-MM-DD HH:MM:SS",
               UnitPrice, CustomerID or null, Country], ...]}
When a replay ends, the producer sends
    {"v": 1, "type": "end", "replay": ..., "total": ..., "t0": ...}
to every partition, so the consumer knows that no partition holds more of that replay. Replays are
ordered by t0: one replay is expected to finish before the next starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipelines.schema import COLUMNS, MESSAGE_SCHEMA_VERSION


class PoisonMessage(ValueError):
    """A message the consumer cannot use; its text says why, for the dead-letter file."""


@dataclass(frozen=True)
class Rows:
    replay: str
    seq: int
    total: int
    t0: int
    rows: list[list[Any]]


@dataclass(frozen=True)
class EndOfReplay:
    replay: str
    total: int
    t0: int


def encode_rows(replay: str, seq: int, total: int, t0: int, rows: list[Any]) -> bytes:
    body = {"v": MESSAGE_SCHEMA_VERSION, "type": "rows", "replay": replay, "seq": seq}
    body.update(total=total, t0=t0, rows=rows)
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def encode_end(replay: str, total: int, t0: int) -> bytes:
    body = {"v": MESSAGE_SCHEMA_VERSION, "type": "end", "replay": replay, "total": total, "t0": t0}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(value: bytes | None) -> Rows | EndOfReplay:
    """Parse and validate one message value, or raise PoisonMessage naming what is wrong."""
    if value is None:
        raise PoisonMessage("empty message (null value)")
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PoisonMessage(f"value is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise PoisonMessage(f"value is a JSON {type(body).__name__}, expected an object")
    if body.get("v") != MESSAGE_SCHEMA_VERSION:
        raise PoisonMessage(f"unknown schema version {body.get('v')!r}")
    replay = _field(body, "replay", str)
    total, t0 = _field(body, "total", int), _field(body, "t0", int)
    kind = body.get("type")
    if kind == "end":
        return EndOfReplay(replay, total, t0)
    if kind != "rows":
        raise PoisonMessage(f"unknown message type {kind!r}")
    seq = _field(body, "seq", int)
    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        raise PoisonMessage("'rows' must be a non-empty list")
    dates: dict[str, None] = {}
    for number, row in enumerate(rows):
        _check_row(row, number, dates)
    return Rows(replay, seq, total, t0, rows)


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if type(value) is not kind or (kind is int and value < 0):
        raise PoisonMessage(f"field {name!r} is {value!r}, expected a {kind.__name__}")
    return value


def _check_row(row: Any, number: int, dates: dict[str, None]) -> None:
    if not isinstance(row, list) or len(row) != len(COLUMNS):
        raise PoisonMessage(f"row {number}: expected a list of {len(COLUMNS)} fields")
    invoice, stock, description, quantity, date, price, customer, country = row
    for name, value in (("InvoiceNo", invoice), ("StockCode", stock), ("Country", country)):
        if not isinstance(value, str) or not value:
            raise PoisonMessage(f"row {number}: {name} {value!r} is not a non-empty string")
    for name, value in (("Description", description), ("CustomerID", customer)):
        if value is not None and not isinstance(value, str):
            raise PoisonMessage(f"row {number}: {name} {value!r} is not a string or null")
    if type(quantity) is not int:
        raise PoisonMessage(f"row {number}: Quantity {quantity!r} is not an integer")
    if type(price) not in (int, float) or not math.isfinite(price):
        raise PoisonMessage(f"row {number}: UnitPrice {price!r} is not a finite number")
    if date not in dates:
        try:
            datetime.fromisoformat(date)
        except (TypeError, ValueError):
            raise PoisonMessage(f"row {number}: InvoiceDate {date!r} is not a date") from None
        dates[date] = None
