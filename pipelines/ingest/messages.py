"""The Kafka message layout (schema version 1) shared by the producer and the consumer.

One message is one invoice: its header once, then its lines in file order. An invoice is the
natural unit of a retail transaction and never straddles two windows, and sending the header once
instead of on each of ~21 lines halves the bytes to encode, ship and decode. The key is the
InvoiceNo, so an invoice's messages keep their order within a partition. Should a file repeat an
InvoiceNo with another date, customer or country, those lines simply travel in a message of their
own: every input row comes out of the stream exactly as it went in.

Value, JSON:
    {"v": 1, "type": "invoice", "replay": "<id>", "seq": <index of the first line in the replay>,
     "total": <lines in the replay>, "t0": <replay start, epoch ms>,
     "invoice": [InvoiceNo, "YYYY-MM-DD HH:MM:SS", CustomerID or null, Country],
     "lines": [[StockCode, Description or null, Quantity, UnitPrice], ...]}
When a replay ends, the producer sends
    {"v": 1, "type": "end", "replay": ..., "total": ..., "t0": ...}
to every partition, so the consumer knows that no partition holds more of that replay. Replays are
ordered by t0: one replay is expected to finish before the next starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd

from pipelines.data.schema import MESSAGE_SCHEMA_VERSION

HEADER_FIELDS = ("InvoiceNo", "InvoiceDate", "CustomerID", "Country")
LINE_FIELDS = ("StockCode", "Description", "Quantity", "UnitPrice")


def invoice_starts(frame: pd.DataFrame) -> np.ndarray:
    """The index of each message's first row: a message is a run of consecutive rows sharing one
    header (HEADER_FIELDS, a missing value equal to a missing value)."""
    if frame.empty:
        return np.array([], dtype=np.int64)
    codes = np.stack([pd.factorize(frame[name])[0] for name in HEADER_FIELDS])
    return np.flatnonzero(np.r_[True, (codes[:, 1:] != codes[:, :-1]).any(axis=0)])


def invoice_date(text: str) -> datetime:
    """An InvoiceDate as sent (ISO text) as a naive datetime; one with an offset is read as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


class PoisonMessage(ValueError):
    """A message the consumer cannot use; its text says why, for the dead-letter file."""


@dataclass(frozen=True)
class Invoice:
    replay: str
    seq: int
    total: int
    t0: int
    header: tuple[Any, ...]  # HEADER_FIELDS
    # One tuple per LINE_FIELDS column. Tuples of plain values are left alone by Python's cyclic
    # garbage collector, which would otherwise rescan every buffered line again and again.
    columns: tuple[tuple[Any, ...], ...]

    def __len__(self) -> int:
        return len(self.columns[0])


@dataclass(frozen=True)
class EndOfReplay:
    replay: str
    total: int
    t0: int


def encode_invoice(
    replay: str, seq: int, total: int, t0: int, header: list[Any], lines: list[Any]
) -> bytes:
    body = {"v": MESSAGE_SCHEMA_VERSION, "type": "invoice", "replay": replay, "seq": seq}
    body.update(total=total, t0=t0, invoice=header, lines=lines)
    return orjson.dumps(body)


def encode_end(replay: str, total: int, t0: int) -> bytes:
    body = {"v": MESSAGE_SCHEMA_VERSION, "type": "end", "replay": replay, "total": total, "t0": t0}
    return orjson.dumps(body)


def decode(value: bytes | None) -> Invoice | EndOfReplay:
    """Parse and validate one message value, or raise PoisonMessage naming what is wrong."""
    if value is None:
        raise PoisonMessage("empty message (null value)")
    try:
        body = orjson.loads(value)  # strict JSON: NaN and Infinity are refused here
    except orjson.JSONDecodeError as error:
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
    if kind != "invoice":
        raise PoisonMessage(f"unknown message type {kind!r}")
    seq = _field(body, "seq", int)
    header, lines = body.get("invoice"), body.get("lines")
    _check_header(header)
    if not isinstance(lines, list) or not lines:
        raise PoisonMessage("'lines' must be a non-empty list")
    columns = _valid_columns(lines)
    if columns is None:
        _raise_for_first_bad_line(lines)
    return Invoice(replay, seq, total, t0, tuple(header), columns)


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if type(value) is not kind or (kind is int and value < 0):
        raise PoisonMessage(f"field {name!r} is {value!r}, expected a {kind.__name__}")
    return value


def _check_header(header: Any) -> None:
    if not isinstance(header, list) or len(header) != len(HEADER_FIELDS):
        raise PoisonMessage(f"'invoice' must be a list of {', '.join(HEADER_FIELDS)}")
    invoice, date, customer, country = header
    for name, value in (("InvoiceNo", invoice), ("Country", country)):
        if not isinstance(value, str) or not value:
            raise PoisonMessage(f"{name} {value!r} is not a non-empty string")
    if customer is not None and not isinstance(customer, str):
        raise PoisonMessage(f"CustomerID {customer!r} is not a string or null")
    try:
        datetime.fromisoformat(date)
    except (TypeError, ValueError):
        raise PoisonMessage(f"InvoiceDate {date!r} is not a date") from None


def _valid_columns(lines: list[Any]) -> tuple[tuple[Any, ...], ...] | None:
    """The fast path: the lines as columns if every field is valid, else None. Whole-column
    checks run as C loops (map, set, all): no Python code per line."""
    if set(map(type, lines)) != {list} or set(map(len, lines)) != {len(LINE_FIELDS)}:
        return None
    columns = tuple(zip(*lines, strict=True))
    stock, description, quantity, price = columns
    valid = (
        set(map(type, stock)) == {str}
        and all(stock)
        and set(map(type, description)) <= {str, type(None)}
        and set(map(type, quantity)) == {int}
        and set(map(type, price)) <= {int, float}
        and all(map(math.isfinite, price))
    )
    return columns if valid else None


def _raise_for_first_bad_line(lines: list[Any]) -> None:
    """The slow path, taken only for a bad message: name the line and the field."""
    for number, line in enumerate(lines):
        if not isinstance(line, list) or len(line) != len(LINE_FIELDS):
            raise PoisonMessage(f"line {number}: expected a list of {', '.join(LINE_FIELDS)}")
        stock, description, quantity, price = line
        if not isinstance(stock, str) or not stock:
            raise PoisonMessage(f"line {number}: StockCode {stock!r} is not a non-empty string")
        if description is not None and not isinstance(description, str):
            raise PoisonMessage(f"line {number}: Description {description!r} is not a string")
        if type(quantity) is not int:
            raise PoisonMessage(f"line {number}: Quantity {quantity!r} is not an integer")
        if type(price) not in (int, float) or not math.isfinite(price):
            raise PoisonMessage(f"line {number}: UnitPrice {price!r} is not a finite number")
