"""Load a copy of the Online Retail file (real or generated) into the canonical transaction frame.

Why: every later stage needs the same columns and dtypes whatever copy it is given: CSV or Excel
(every sheet), Online Retail or Online Retail II spellings, four- or two-digit years, UTF-8 or
Latin-1; one file, or a directory or glob of them read in name order, as Spark's own copy of this
dataset ships (305 daily CSV files, ISO dates, float customer ids). Real copies carry malformed
lines; those are reported with their file and line numbers and skipped, never fatal. Only a
missing file or a header that is not this schema's raises.

Speed matters because this feeds the streaming path, so there is no per-value Python: the csv
module splits the fields, pandas converts each column at once, and the few values that fail to
convert are mapped back to their physical lines. Memory matters too: `iter_transactions` reads a
file `CHUNK_ROWS` records at a time (CSV and Excel alike), so the producer's memory does not grow
with the file; `load_transactions` gathers the chunks into one frame. One module of ~450 lines on
purpose: the CSV and Excel readers both produce the `_Block` that one converter types and reports
from.

    python -m pipelines.load PATH        # a .csv or .xlsx file, a directory of them, or a glob
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gc
import glob
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from pipelines.data.schema import COLUMNS, canonical_name, is_cancellation

# Tried in order on the values still unparsed: the real file's two spellings, then ISO 8601.
DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%y %H:%M", "ISO8601")
# What a directory or a glob contributes; other names (Spark's .crc, _SUCCESS) are passed by.
SUFFIXES = (".csv", ".xlsx")
# Records read and converted at a time: the loader's memory, whatever the file's size.
CHUNK_ROWS = 100_000
_READ_BYTES = 1 << 20  # how much text a CSV read asks for at once


class LoadError(ValueError):
    """The file cannot be read as transactions at all (as opposed to a few malformed lines)."""


@dataclass(frozen=True)
class MalformedLine:
    """A line left out of the frame, and why."""

    line: int  # 1-based physical line of the CSV (header = 1), or row number of the sheet
    reason: str  # e.g. "expected 8 fields, got 7", "Quantity 'abc' is not an integer"
    raw: str  # the line's text as found (cells joined by commas for Excel)
    sheet: str | None = None  # Excel only: the sheet the row is on
    file: str = ""  # the file the line is in

    @property
    def where(self) -> str:
        """'data/2010-12-01.csv line 11', or "data/x.xlsx sheet 'Year 2010-2011' row 3"."""
        place = f"sheet {self.sheet!r} row {self.line}" if self.sheet else f"line {self.line}"
        return f"{self.file} {place}" if self.file else place


@dataclass
class LoadedChunk:
    """Consecutive rows of one file (`iter_transactions`) and the lines left out among them."""

    frame: pd.DataFrame  # as LoadResult.frame
    malformed: list[MalformedLine]


@dataclass
class LoadResult:
    frame: pd.DataFrame  # schema.COLUMNS in order, canonical dtypes (see `load_transactions`)
    malformed: list[MalformedLine] = field(default_factory=list)
    source: str = ""  # the path or pattern as given
    files: list[str] = field(default_factory=list)  # what it named, in the order read


@dataclass(frozen=True)
class _Block:
    """The well-formed records of one CSV file or one sheet, fields still text."""

    columns: list[np.ndarray]  # object arrays of str, in schema.COLUMNS order
    lines: np.ndarray  # where each record starts
    raw: Callable[[int], str]  # record index -> its text
    malformed: list[MalformedLine]  # records left out already: the wrong number of fields
    sheet: str | None = None


def load_transactions(path: str | Path) -> LoadResult:
    """Read a .csv or .xlsx Online Retail file, or every one a directory or glob names.

    The frame has exactly schema.COLUMNS, in that order, in file order (files in name order):
    InvoiceNo, StockCode, Description, Country as str (Description "" when empty); Quantity
    int64; InvoiceDate datetime64[ns] (naive); UnitPrice float64; CustomerID str or None, with
    Excel's 17850.0 written 17850. Raises FileNotFoundError, or LoadError naming the file and
    what is wrong with its header.
    """
    files = input_files(path)
    frames, malformed = [], []
    for chunk in iter_transactions(path):
        frames.append(chunk.frame)
        malformed += chunk.malformed
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return LoadResult(frame, malformed, str(path), [str(file) for file in files])


def iter_transactions(path: str | Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[LoadedChunk]:
    """What `load_transactions` reads, as consecutive chunks of at most `chunk_rows` records
    each (a chunk may be empty), so that a file of any size is read in bounded memory."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    readers = {".csv": _read_csv, ".xlsx": _read_xlsx}
    for file in input_files(path):
        read = readers.get(file.suffix.lower())
        if read is None:
            expected = " or ".join(readers)
            raise LoadError(f"{file}: unsupported file type {file.suffix!r}; expected {expected}")
        for block in read(file, chunk_rows):
            with _collector_paused():
                frame, bad = _convert(block)
            found = sorted(block.malformed + bad, key=lambda m: m.line)
            yield LoadedChunk(frame, [replace(m, file=str(file)) for m in found])


def input_files(path: str | Path) -> list[Path]:
    """The files `path` names: itself; a directory's .csv and .xlsx files; or a glob pattern's
    (``data/by-day/*.csv``); the last two in name order. FileNotFoundError when none."""
    given = Path(path)
    if given.is_file():
        return [given]
    if given.is_dir():
        found, where = list(given.iterdir()), f"the directory {given}"
    elif any(mark in str(path) for mark in "*?["):
        found, where = [Path(name) for name in glob.glob(str(path))], f"the pattern {path}"
    else:
        raise FileNotFoundError(f"no such transactions file: {given}")
    files = sorted((f for f in found if f.is_file() and f.suffix.lower() in SUFFIXES), key=str)
    if not files:
        raise FileNotFoundError(f"no .csv or .xlsx file in {where}")
    return files


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic GC: parsing makes millions of small lists and strings, none cyclic, and
    the collector rescanning them as they pile up more than doubled the load time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _column_order(header: Sequence[str], where: str) -> list[int]:
    """Positions of schema.COLUMNS in a header of either spelling; LoadError when it is not one."""
    names = [canonical_name(str(name)) for name in header]
    missing = [name for name in COLUMNS if name not in names]
    unknown = [str(raw) for raw, name in zip(header, names, strict=True) if name not in COLUMNS]
    if missing or unknown or len(names) != len(COLUMNS):
        raise LoadError(
            f"{where}: not an Online Retail header: {list(header)!r} "
            f"(missing {missing}, unknown {unknown}); expected {', '.join(COLUMNS)} "
            "or the Online Retail II spellings Invoice, Price, Customer ID"
        )
    return [names.index(name) for name in COLUMNS]


def _encoding(path: Path) -> str:
    """UTF-8 (with or without a BOM) when the whole file is UTF-8, else Latin-1: real copies are
    often ISO-8859-1/cp1252. Decided before the first chunk, so every chunk reads alike."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as raw:
        try:
            while data := raw.read(1 << 24):
                decoder.decode(data)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"  # decodes any byte
    return "utf-8-sig"


class _Lines:
    """A text file's physical lines as the csv module counts them (ended by \\n, \\r\\n or
    \\r), keeping those not yet `dropped` so that a record's text can be quoted."""

    def __init__(self, handle: TextIO) -> None:
        reads = iter(lambda: handle.readlines(_READ_BYTES), [])
        self._lines = chain.from_iterable(map(self._keep, reads))
        self.kept: list[str] = []
        self.first = 1  # the line number of kept[0]

    def _keep(self, lines: list[str]) -> list[str]:
        self.kept.extend(lines)
        return lines

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def between(self, first: int, last: int) -> list[str]:
        """Lines `first`..`last` (1-based, inclusive), still kept."""
        return self.kept[first - self.first : last - self.first + 1]

    def drop_through(self, last: int) -> None:
        del self.kept[: last - self.first + 1]
        self.first = last + 1


def _record_lines(
    path: Path, lines: list[str], first: int
) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """The csv records of `lines`, which start at line `first`, with the first and last line of
    each (the slow path, for records with quoted line breaks)."""
    reader = csv.reader(lines)
    records, ends = [], []
    try:
        for record in reader:
            records.append(record)
            ends.append(reader.line_num)
    except csv.Error as error:
        raise LoadError(f"{path}: line {first + reader.line_num - 1}: {error}") from error
    last = np.array(ends, dtype=np.int64) + first - 1
    return records, np.concatenate([[first], last[:-1] + 1]), last


def _read_csv(path: Path, chunk_rows: int) -> Iterator[_Block]:
    with open(path, encoding=_encoding(path), newline="") as handle:
        lines = _Lines(handle)
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
        except csv.Error as error:  # e.g. an unclosed quote running into the field size limit
            raise LoadError(f"{path}: line {reader.line_num}: {error}") from error
        if not header:
            raise LoadError(f"{path}: no header on line 1; expected {', '.join(COLUMNS)}")
        order = _column_order(header, str(path))
        lines.drop_through(reader.line_num)
        while True:  # the last block is short, perhaps empty
            before = reader.line_num
            with _collector_paused():
                try:
                    records = list(islice(reader, chunk_rows))
                except csv.Error as error:
                    raise LoadError(f"{path}: line {reader.line_num}: {error}") from error
                block = _csv_block(path, records, lines, before + 1, reader.line_num, order)
            lines.drop_through(reader.line_num)
            yield block
            if len(records) < chunk_rows:
                return


def _csv_block(
    path: Path, records: list[list[str]], lines: _Lines, first: int, last: int, order: list[int]
) -> _Block:
    """The records read from lines `first`..`last` as a block; blank lines are passed by."""
    physical = lines.between(first, last)
    if last - first + 1 == len(records):  # no quoted line breaks: record i is line first + i
        starts = ends = np.arange(first, last + 1)
    else:
        records, starts, ends = _record_lines(path, physical, first)

    def raw(index: int) -> str:  # index into records
        return "".join(physical[starts[index] - first : ends[index] - first + 1]).rstrip("\r\n")

    counts = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    malformed = []
    for i in np.flatnonzero((counts != len(COLUMNS)) & (counts != 0)):  # blank lines: skipped
        reason = f"expected {len(COLUMNS)} fields, got {counts[i]}"
        if ends[i] > starts[i]:
            reason += f" (a quoted field runs over lines {starts[i]}-{ends[i]})"
        malformed.append(MalformedLine(int(starts[i]), reason, raw(i)))
    keep = np.flatnonzero(counts == len(COLUMNS))
    good = records if len(keep) == len(records) else [records[i] for i in keep]
    return _Block(_columns(good, order), starts[keep], lambda i: raw(keep[i]), malformed)


def _columns(records: list[list[str]], order: list[int]) -> list[np.ndarray]:
    """Records of len(COLUMNS) fields -> one object array per column, in schema.COLUMNS order."""
    table = np.array(records, dtype=object).reshape(len(records), len(COLUMNS))
    # Contiguous copies, so the table and the text of converted columns can be freed.
    return [np.ascontiguousarray(table[:, position]) for position in order]


def _cell_text(value: object) -> str:
    """An Excel cell as the text a CSV copy would hold (whole floats without '.0')."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _trimmed(cells: list[str]) -> list[str]:
    """Without trailing empty cells (sheets often report more columns than they fill)."""
    end = len(cells)
    while end and not cells[end - 1]:
        end -= 1
    return cells[:end]


def _read_sheet(
    rows: Iterator[list[str]], title: str, where: str, chunk_rows: int
) -> Iterator[_Block]:
    """A sheet's rows (as cell texts) in blocks of `chunk_rows`; nothing for an empty sheet."""
    header = next(rows, None)
    if header is None or (not any(header) and not any(map(any, rows))):
        return
    order = _column_order(_trimmed(header), where)
    number = 1  # the sheet's row number
    while True:  # the last block is short, perhaps empty
        chunk = list(islice(rows, chunk_rows))
        records, lines, malformed = [], [], []
        for row in chunk:
            number += 1
            cells = _trimmed(row)
            if len(cells) > len(COLUMNS):
                reason = f"expected {len(COLUMNS)} fields, got {len(cells)}"
                malformed.append(MalformedLine(number, reason, ",".join(cells), title))
            elif cells:
                records.append(cells + [""] * (len(COLUMNS) - len(cells)))
                lines.append(number)

        def raw(index: int, records: list[list[str]] = records) -> str:
            return ",".join(records[index])

        columns = _columns(records, order)
        yield _Block(columns, np.array(lines, dtype=np.int64), raw, malformed, title)
        if len(chunk) < chunk_rows:
            return


def _read_xlsx(path: Path, chunk_rows: int) -> Iterator[_Block]:
    """Every non-empty sheet, each with its own header on row 1 (Online Retail II has two), read
    row by row (openpyxl's read-only mode streams a sheet)."""
    import openpyxl  # only Excel files need it

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    found = False
    try:
        for sheet in workbook.worksheets:
            rows = ([_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True))
            where = f"{path} sheet {sheet.title!r}"
            for block in _read_sheet(rows, sheet.title, where, chunk_rows):
                found = True
                yield block
    finally:
        workbook.close()
    if not found:
        raise LoadError(f"{path}: every sheet is empty; expected a header {', '.join(COLUMNS)}")


def _per_distinct(values: np.ndarray, convert: Callable[[pd.Series], pd.Series]) -> np.ndarray:
    """convert() on each distinct value once: columns repeat a few thousand values many times."""
    codes, uniques = pd.factorize(values)
    return convert(pd.Series(uniques, dtype=object)).to_numpy()[codes]


def _dates(values: pd.Series) -> pd.Series:
    """Each value by the first of DATE_FORMATS that fits; NaT where none does."""
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    for date_format in DATE_FORMATS:
        todo = parsed.isna()
        if not todo.any():
            break
        # utc=True only matters for ISO values with an offset: they become naive UTC times.
        when = pd.to_datetime(values[todo], format=date_format, errors="coerce", utc=True)
        parsed[todo] = when.dt.tz_localize(None)
    return parsed


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype(np.float64)


def _customer_ids(values: pd.Series) -> pd.Series:
    """Text IDs, None when missing; '17850.0' (Excel floats) -> '17850'."""
    cleaned = values.str.strip().str.replace(r"^(\d+)\.0*$", r"\1", regex=True)
    return pd.Series([text or None for text in cleaned], dtype=object)


_PROBLEMS: dict[str, Callable[[str], str]] = {
    "InvoiceNo": lambda value: "InvoiceNo is empty",
    "Quantity": lambda value: f"Quantity {value!r} is not an integer",
    "InvoiceDate": lambda value: f"InvoiceDate {value!r} is not a date",
    "UnitPrice": lambda value: f"UnitPrice {value!r} is not a number",
}


def _convert(block: _Block) -> tuple[pd.DataFrame, list[MalformedLine]]:
    """Typed columns for the block; records with a value that does not convert are reported."""
    text = dict(zip(COLUMNS, block.columns, strict=True))
    quantity = _per_distinct(text["Quantity"], _numbers)
    price = _per_distinct(text["UnitPrice"], _numbers)
    dates = _per_distinct(text["InvoiceDate"], _dates)
    failed = {
        "InvoiceNo": text["InvoiceNo"] == "",
        "Quantity": ~((np.abs(quantity) < 2**62) & (quantity == np.round(quantity))),
        "InvoiceDate": np.isnat(dates),
        "UnitPrice": ~np.isfinite(price),
    }
    bad = np.logical_or.reduce(list(failed.values()))
    malformed = [
        MalformedLine(
            int(block.lines[i]),
            "; ".join(_PROBLEMS[name](text[name][i]) for name, mask in failed.items() if mask[i]),
            block.raw(i),
            block.sheet,
        )
        for i in np.flatnonzero(bad)
    ]
    columns = {**text, "Quantity": quantity, "InvoiceDate": dates, "UnitPrice": price}
    if bad.any():  # the usual file has none, and then no column is copied
        columns = {name: values[~bad] for name, values in columns.items()}
    columns["Quantity"] = columns["Quantity"].astype(np.int64)
    columns["CustomerID"] = _per_distinct(columns["CustomerID"], _customer_ids)
    # copy=False: the arrays are ours alone, and consolidating them would copy every column.
    return pd.DataFrame(columns, columns=list(COLUMNS), copy=False), malformed


def summary(result: LoadResult, limit: int = 20) -> str:
    """What the CLI prints: counts, date range and the first `limit` malformed lines."""
    frame = result.frame
    invoices = frame["InvoiceNo"].unique()
    cancelled = sum(map(is_cancellation, invoices))
    lines = [
        f"source:        {result.source}"
        + (f" ({len(result.files):,} files)" if len(result.files) > 1 else ""),
        f"rows:          {len(frame):,}",
        f"customers:     {frame['CustomerID'].nunique():,}",
        f"invoices:      {len(invoices):,}",
        f"cancellations: {cancelled:,} invoices",
    ]
    if len(frame):
        lines.append(f"dates:         {frame['InvoiceDate'].min()} .. {frame['InvoiceDate'].max()}")
    lines.append(f"malformed:     {len(result.malformed):,} lines")
    for bad in result.malformed[:limit]:
        lines.append(f"  {bad.where}: {bad.reason}: {bad.raw}")
    if len(result.malformed) > limit:
        lines.append(f"  ... and {len(result.malformed) - limit:,} more")
    return "\n".join(lines)
