"""Load a copy of the Online Retail file (real or generated) into the canonical transaction frame.

Why: every later stage needs the same columns and dtypes whatever copy it is given: CSV or Excel
(every sheet), Online Retail or Online Retail II spellings, four- or two-digit years, UTF-8 or
Latin-1; one file, or a directory or glob of them read in name order, as Spark's own copy of this
dataset ships (305 daily CSV files, ISO dates, float customer ids). Real copies carry malformed
lines; those are reported with their file and line numbers and skipped, never fatal. Only a
missing file or a header that is not this schema's raises.

Speed matters because this feeds the streaming path, so there is no per-value Python: the csv
module splits the fields, pandas converts each column at once, and the few values that fail to
convert are mapped back to their physical lines. One module of ~370 lines on purpose: the CSV
and Excel readers both produce the `_Block` that one converter types and reports from.

    python -m pipelines.load PATH        # a .csv or .xlsx file, a directory of them, or a glob
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import glob
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.schema import COLUMNS, canonical_name, is_cancellation

# Tried in order on the values still unparsed: the real file's two spellings, then ISO 8601.
DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%y %H:%M", "ISO8601")
# What a directory or a glob contributes; other names (Spark's .crc, _SUCCESS) are passed by.
SUFFIXES = (".csv", ".xlsx")
# Where str.splitlines breaks but the csv module does not.
_OTHER_LINE_BREAKS = ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


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
    readers = {".csv": _read_csv, ".xlsx": _read_xlsx}
    frames, malformed = [], []
    with _collector_paused():
        for file in files:
            read = readers.get(file.suffix.lower())
            if read is None:
                raise LoadError(
                    f"{file}: unsupported file type {file.suffix!r}; expected .csv or .xlsx"
                )
            for block in read(file):
                frame, bad = _convert(block)
                frames.append(frame)
                found = sorted(block.malformed + bad, key=lambda m: m.line)
                malformed += [replace(m, file=str(file)) for m in found]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return LoadResult(frame, malformed, str(path), [str(file) for file in files])


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


def _decode(data: bytes) -> str:
    """UTF-8 (with or without a BOM), else Latin-1: real copies are often ISO-8859-1/cp1252."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # decodes any byte


def _physical_lines(text: str) -> list[str]:
    """Lines as the csv module counts them: ended by \\n, \\r\\n or \\r."""
    if any(mark in text for mark in _OTHER_LINE_BREAKS):
        return io.StringIO(text, newline="").readlines()
    return text.splitlines(keepends=True)  # the same lines here, and twice as fast


def _records(path: Path, physical: list[str]) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """The csv records with the first and last physical line of each."""
    reader = csv.reader(physical)
    try:
        records = list(reader)
        if reader.line_num == len(records):  # no quoted newlines: record i is line i + 1
            starts = np.arange(1, len(records) + 1)
            return records, starts, starts
        reader = csv.reader(physical)
        records, ends = [], []
        for record in reader:
            records.append(record)
            ends.append(reader.line_num)
    except csv.Error as error:  # e.g. an unclosed quote running into the field size limit
        raise LoadError(f"{path}: line {reader.line_num}: {error}") from error
    last = np.array(ends)
    return records, np.concatenate([[1], last[:-1] + 1]), last


def _read_csv(path: Path) -> list[_Block]:
    physical = _physical_lines(_decode(path.read_bytes()))
    records, starts, ends = _records(path, physical)
    if not records or not records[0]:
        raise LoadError(f"{path}: no header on line 1; expected {', '.join(COLUMNS)}")
    order = _column_order(records[0], str(path))

    def raw(index: int) -> str:  # index into records
        return "".join(physical[starts[index] - 1 : ends[index]]).rstrip("\r\n")

    counts = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    counts[0] = 0  # the header
    malformed = []
    for i in np.flatnonzero((counts != len(COLUMNS)) & (counts != 0)):  # blank lines: skipped
        reason = f"expected {len(COLUMNS)} fields, got {counts[i]}"
        if ends[i] > starts[i]:
            reason += f" (a quoted field runs over lines {starts[i]}-{ends[i]})"
        malformed.append(MalformedLine(int(starts[i]), reason, raw(i)))
    keep = np.flatnonzero(counts == len(COLUMNS))
    good = records[1:] if len(keep) == len(records) - 1 else [records[i] for i in keep]
    return [_Block(_columns(good, order), starts[keep], lambda i: raw(keep[i]), malformed)]


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


def _read_sheet(rows: list[list[str]], title: str, where: str) -> _Block:
    order = _column_order(_trimmed(rows[0]), where)
    records, lines, malformed = [], [], []
    for number, row in enumerate(rows[1:], start=2):
        cells = _trimmed(row)
        if len(cells) > len(COLUMNS):
            reason = f"expected {len(COLUMNS)} fields, got {len(cells)}"
            malformed.append(MalformedLine(number, reason, ",".join(cells), title))
        elif cells:
            records.append(cells + [""] * (len(COLUMNS) - len(cells)))
            lines.append(number)

    def raw(index: int) -> str:
        return ",".join(records[index])

    columns = _columns(records, order)
    return _Block(columns, np.array(lines, dtype=np.int64), raw, malformed, title)


def _read_xlsx(path: Path) -> list[_Block]:
    """Every non-empty sheet, each with its own header on row 1 (Online Retail II has two)."""
    import openpyxl  # only Excel files need it

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheets = [
            (
                sheet.title,
                [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)],
            )
            for sheet in workbook.worksheets
        ]
    finally:
        workbook.close()
    blocks = [
        _read_sheet(rows, title, f"{path} sheet {title!r}")
        for title, rows in sheets
        if any(map(any, rows))
    ]
    if not blocks:
        raise LoadError(f"{path}: every sheet is empty; expected a header {', '.join(COLUMNS)}")
    return blocks


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
