"""The loader on real samples and on hand-made files: columns, dtypes, both spellings, every date
format, Excel with two sheets, Latin-1, malformed lines reported with their exact numbers, and a
directory or glob of daily files as Spark's own sample of this dataset ships them. Some 400
lines: every case writes the small file it reads right where it is checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.data.generator import generate_dataset
from pipelines.data.load import (
    LoadError,
    MalformedLine,
    iter_transactions,
    load_transactions,
    summary,
)
from pipelines.data.schema import COLUMNS
from pipelines.ingest.producer import replay
from pipelines.load import main
from pipelines.produce import main as produce_main

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
HEADER = ",".join(COLUMNS)
II_HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"


def sample(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.fail(
            f"missing test sample {path}: the repository expects shared/data/ beside it "
            "(<parent>/main and <parent>/shared)",
            pytrace=False,
        )
    return path


def assert_canonical(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(COLUMNS)
    assert frame["Quantity"].dtype == np.int64
    assert frame["UnitPrice"].dtype == np.float64
    assert frame["InvoiceDate"].dtype == "datetime64[ns]"
    for name in ("InvoiceNo", "StockCode", "Description", "CustomerID", "Country"):
        assert frame[name].dtype == object, name
    ids = frame["CustomerID"].dropna()
    assert ids.map(type).eq(str).all() and not ids.str.endswith(".0").any()


def write(path: Path, *lines: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def test_raw_online_retail_sample() -> None:
    path = sample("online_retail_head_raw.csv")
    result = load_transactions(path)
    frame = result.frame
    assert_canonical(frame)
    assert result.source == str(path)
    assert len(frame) == 20  # 24 data lines, 4 of them malformed
    assert frame["CustomerID"].nunique() == 9
    assert frame["InvoiceNo"].nunique() == 11
    first = frame.iloc[0]
    assert first["InvoiceNo"] == "536365" and first["StockCode"] == "85123A"
    assert first["InvoiceDate"] == pd.Timestamp("2010-12-01 08:26")  # from 12/1/10 8:26
    assert first["CustomerID"] == "17850" and first["UnitPrice"] == 2.55
    cancelled = frame[frame["InvoiceNo"] == "C536383"]
    assert cancelled["Quantity"].tolist() == [-1]
    assert frame["Description"].iloc[4] == "CHARLOTTE BAG DOLLY GIRL DE "  # kept verbatim

    physical = path.read_text().splitlines()
    assert [bad.line for bad in result.malformed] == [11, 19, 21, 23]
    for bad in result.malformed:
        assert bad.reason == "expected 8 fields, got 7"
        assert bad.raw == physical[bad.line - 1]
        assert bad.sheet is None
    assert result.malformed[0].raw.startswith("536381,21175,GIN + TONIC DIET METAL   2,")
    # File order is kept: the rows are the well-formed lines, in order.
    malformed = {11, 19, 21, 23}
    wanted = [
        line.split(",")[0] for n, line in enumerate(physical, 1) if n > 1 and n not in malformed
    ]
    assert frame["InvoiceNo"].tolist() == wanted


def test_online_retail_ii_sample() -> None:
    result = load_transactions(sample("online_retail_II_head.csv"))
    frame = result.frame
    assert_canonical(frame)
    assert result.malformed == []
    assert len(frame) == 99
    assert frame["InvoiceNo"].nunique() == 14
    assert frame["CustomerID"].nunique() == 7
    assert frame["InvoiceDate"].iloc[0] == pd.Timestamp("2010-12-01 08:26")  # 12/1/2010 08:26
    assert frame["CustomerID"].iloc[0] == "17850"


def test_every_date_format_and_excel_style_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "dates.csv",
        HEADER,
        "536365,85123A,HEART,6,12/1/2010 08:26,2.55,17850.0,United Kingdom",
        "536366,71053,LANTERN,6,12/1/10 8:28,3.39,17850,United Kingdom",
        "536367,84879,BIRD,32,2010-12-01 08:34:00,1.69,,France",
        "536368,22728,CLOCK,24,2011-06-30 17:05,3.75, 12583 ,France",
    )
    frame = load_transactions(path).frame
    assert frame["InvoiceDate"].tolist() == [
        pd.Timestamp("2010-12-01 08:26"),
        pd.Timestamp("2010-12-01 08:28"),
        pd.Timestamp("2010-12-01 08:34"),
        pd.Timestamp("2011-06-30 17:05"),
    ]
    assert frame["CustomerID"].tolist() == ["17850", "17850", None, "12583"]


def test_bad_values_are_reported_with_physical_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.csv",
        HEADER,
        '536365,85123A,"TWO-LINE\nDESCRIPTION",6,12/1/2010 8:26,2.55,17850,United Kingdom',  # 2-3
        "536365,71053,LANTERN,abc,12/1/2010 8:26,3.39,17850,United Kingdom",  # 4
        "",  # 5: blank, skipped silently
        "536366,84879,BIRD,32,13/45/2010 8:34,1.69,13047,United Kingdom",  # 6
        "536366,22728,CLOCK,24,12/1/2010 8:34,cheap,13047,United Kingdom",  # 7
        "536366,22661,BAG,1.5,12/1/2010 8:34,0.85,13047,United Kingdom,extra",  # 8
        ",22344,POSTAGE,x,someday,18,13047,United Kingdom",  # 9
        "536367,22139,TEA SET,23,12/1/2010 9:41,4.25,15311,United Kingdom",  # 10
    )
    result = load_transactions(path)
    assert result.frame["StockCode"].tolist() == ["85123A", "22139"]
    assert result.frame["Description"].iloc[0] == "TWO-LINE\nDESCRIPTION"
    assert [(bad.line, bad.reason) for bad in result.malformed] == [
        (4, "Quantity 'abc' is not an integer"),
        (6, "InvoiceDate '13/45/2010 8:34' is not a date"),
        (7, "UnitPrice 'cheap' is not a number"),
        (8, "expected 8 fields, got 9"),
        (
            9,
            "InvoiceNo is empty; Quantity 'x' is not an integer; "
            "InvoiceDate 'someday' is not a date",
        ),
    ]
    lines = path.read_text().splitlines()
    assert all(bad.raw == lines[bad.line - 1] for bad in result.malformed)


def test_unclosed_quote_is_one_malformed_record_naming_its_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "quote.csv",
        HEADER,
        '536365,85123A,"BROKEN,6,12/1/2010 8:26,2.55,17850,United Kingdom',  # 2, runs on to 3
        '536365,71053,"LANTERN, WHITE",6,12/1/2010 8:26,3.39,17850,United Kingdom',  # 3
        "536366,84879,BIRD,32,12/1/2010 8:34,1.69,13047,United Kingdom",  # 4
    )
    result = load_transactions(path)
    assert result.frame["StockCode"].tolist() == ["84879"]
    (bad,) = result.malformed
    assert bad.line == 2
    assert bad.reason == "expected 8 fields, got 9 (a quoted field runs over lines 2-3)"
    assert bad.raw == "\n".join(path.read_text().splitlines()[1:3])


def test_iso_dates_with_an_offset_become_naive_utc(tmp_path: Path) -> None:
    path = write(tmp_path / "tz.csv", HEADER, "1,A,D,1,2010-12-01T08:26:00+01:00,1.5,,UK")
    assert load_transactions(path).frame["InvoiceDate"].tolist() == [
        pd.Timestamp("2010-12-01 07:26")
    ]


def test_non_integral_quantity_is_malformed(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv",
        HEADER,
        "1,A,D,1.5,12/1/2010 8:26,1,,UK",
        "2,A,D,3.0,12/1/2010 8:26,1,,UK",
    )
    result = load_transactions(path)
    assert result.frame["Quantity"].tolist() == [3]
    assert result.malformed == [
        MalformedLine(
            2,
            "Quantity '1.5' is not an integer",
            "1,A,D,1.5,12/1/2010 8:26,1,,UK",
            file=str(path),
        )
    ]


def test_latin_1_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "latin1.csv",
        HEADER,
        "536365,85123A,CRÈME BRÛLÉE SET,6,12/1/2010 8:26,2.55,17850,Curaçao",
        encoding="latin-1",
    )
    frame = load_transactions(path).frame
    assert frame["Description"].tolist() == ["CRÈME BRÛLÉE SET"]
    assert frame["Country"].tolist() == ["Curaçao"]


def test_latin_1_byte_that_python_calls_a_line_break(tmp_path: Path) -> None:
    """cp1252's ellipsis is byte 0x85, which Latin-1 decodes to NEL: not a CSV line break."""
    path = tmp_path / "nel.csv"
    rows = [HEADER, "1,A,WAIT\x85,1,12/1/2010 8:26,1.5,,UK", "2,B,BAD,x,12/1/2010 8:26,1.5,,UK"]
    path.write_bytes("\n".join(rows).encode("latin-1"))
    result = load_transactions(path)
    assert result.frame["Description"].tolist() == ["WAIT\x85"]
    assert [bad.line for bad in result.malformed] == [3]


def test_utf8_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(
        (
            "\ufeff" + II_HEADER + "\r\n536365,85123A,CAFÉ,6,12/1/2010 8:26,2.55,17850,France\r\n"
        ).encode("utf-8")
    )
    result = load_transactions(path)
    assert result.malformed == []
    assert result.frame["Description"].tolist() == ["CAFÉ"]


def _chunked(path: Path, chunk_rows: int) -> tuple[pd.DataFrame, list[MalformedLine]]:
    chunks = list(iter_transactions(path, chunk_rows))
    frame = pd.concat([chunk.frame for chunk in chunks], ignore_index=True)
    return frame, [bad for chunk in chunks for bad in chunk.malformed]


def test_a_file_read_in_chunks_of_any_size_is_read_alike(tmp_path: Path) -> None:
    """What the producer relies on to stream a file: records split over lines, blank lines, bad
    lines and Latin-1 text fall where they fall, and nothing depends on where chunks end."""
    csv_path = tmp_path / "tricky.csv"
    lines = [
        HEADER,
        '536365,85123A,"TWO-LINE\rDESCRIPTION",6,12/1/2010 8:26,2.55,17850,United Kingdom',
        "536365,71053,LANTERN,abc,12/1/2010 8:26,3.39,17850,United Kingdom",
        "",
        '536366,84879,"BIRD\r\nTWO",32,12/1/2010 8:34,1.69,13047,Curaçao',
        "536366,22661,BAG,1,12/1/2010 8:34,0.85,13047,United Kingdom,extra",
        "536367,22139,WAIT\x85,23,12/1/2010 9:41,4.25,,United Kingdom",
        '536368,85123A,"BROKEN,6,12/1/2010 8:26,2.55,17850,United Kingdom',
        '536368,71053,"LANTERN, WHITE",6,12/1/2010 8:26,3.39,17850,United Kingdom',
        "536369,84879,BIRD,32,12/1/2010 10:34,1.69,13047,United Kingdom",
    ]
    csv_path.write_bytes("\r\n".join(lines).encode("latin-1"))
    xlsx_path = tmp_path / "rows.xlsx"
    rows = pd.DataFrame(
        [
            [f"5363{i}", "A", "D", "x" if i == 4 else i, "12/1/2010 8:26", 1.5, 17850, "UK"]
            for i in range(10)
        ],
        columns=list(COLUMNS),
    )
    rows.to_excel(xlsx_path, sheet_name="Online Retail", index=False)

    for path in (csv_path, xlsx_path):
        whole = load_transactions(path)
        assert len(whole.frame) >= 4 and whole.malformed
        for chunk_rows in (1, 2, 3, 4):
            frame, malformed = _chunked(path, chunk_rows)
            pd.testing.assert_frame_equal(frame, whole.frame)
            assert malformed == whole.malformed


def test_xlsx_with_two_sheets(tmp_path: Path) -> None:
    def sheet(invoices: list[str], ids: list[float], dates: list[str]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "Invoice": invoices,
                "StockCode": ["85123A", "71053"],
                "Description": ["HEART", None],
                "Quantity": [6, -2],
                "InvoiceDate": pd.to_datetime(dates),
                "Price": [2.55, 3.0],
                "Customer ID": ids,
                "Country": ["United Kingdom", "France"],
            }
        )

    path = tmp_path / "online_retail_II.xlsx"
    with pd.ExcelWriter(path) as writer:
        first = sheet(["489434", "C489435"], [13085.0, np.nan], ["2009-12-01 07:45"] * 2)
        first.to_excel(writer, sheet_name="Year 2009-2010", index=False)
        second = sheet([536365, 536366], [17850.0, 12583.0], ["2010-12-01 08:26"] * 2)
        second.to_excel(writer, sheet_name="Year 2010-2011", index=False)

    result = load_transactions(path)
    frame = result.frame
    assert_canonical(frame)
    assert result.malformed == []
    assert frame["InvoiceNo"].tolist() == ["489434", "C489435", "536365", "536366"]
    assert frame["CustomerID"].tolist() == ["13085", None, "17850", "12583"]
    assert frame["Quantity"].tolist() == [6, -2, 6, -2]
    assert frame["UnitPrice"].tolist() == [2.55, 3.0, 2.55, 3.0]
    assert frame["Description"].tolist() == ["HEART", "", "HEART", ""]
    assert frame["InvoiceDate"].iloc[2] == pd.Timestamp("2010-12-01 08:26")


def test_xlsx_bad_value_names_sheet_and_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.xlsx"
    rows = pd.DataFrame(
        [
            ["536365", "85123A", "HEART", 6, "12/1/2010 8:26", 2.55, 17850, "United Kingdom"],
            ["536366", "71053", "LANTERN", "abc", "12/1/2010 8:28", 3.39, 17850, "France"],
        ],
        columns=list(COLUMNS),
    )
    rows.to_excel(path, sheet_name="Online Retail", index=False)
    result = load_transactions(path)
    assert result.frame["InvoiceNo"].tolist() == ["536365"]
    (bad,) = result.malformed
    assert (bad.sheet, bad.line, bad.reason) == (
        "Online Retail",
        3,
        "Quantity 'abc' is not an integer",
    )


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_transactions(tmp_path / "nowhere.csv")


def test_wrong_header_names_what_is_missing(tmp_path: Path) -> None:
    header = "InvoiceNo,StockCode,Quantity,When,UnitPrice,CustomerID,Country"
    path = write(tmp_path / "h.csv", header, "536365,85123A,6,12/1/2010 8:26,2.55,17850,UK")
    with pytest.raises(
        LoadError, match=r"missing \['Description', 'InvoiceDate'\], unknown \['When'\]"
    ):
        load_transactions(path)


def test_headerless_empty_and_unknown_files_are_refused(tmp_path: Path) -> None:
    data_first = write(tmp_path / "d.csv", "536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,UK")
    with pytest.raises(LoadError, match="not an Online Retail header"):
        load_transactions(data_first)
    with pytest.raises(LoadError, match="no header"):
        load_transactions(write(tmp_path / "e.csv", ""))
    with pytest.raises(LoadError, match="unsupported file type '.json'"):
        load_transactions(write(tmp_path / "f.json", "{}"))


def test_cli_prints_counts_and_malformed_lines(capsys: pytest.CaptureFixture) -> None:
    assert main([str(sample("online_retail_head_raw.csv"))]) == 0
    out = capsys.readouterr().out
    assert "rows:          20" in out
    assert "cancellations: 1 invoices" in out
    assert "malformed:     4 lines" in out
    assert "line 11: expected 8 fields, got 7: 536381,21175,GIN + TONIC DIET METAL   2," in out


def test_cli_error_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.csv")])
    assert exit_info.value.code == 2
    assert "no such transactions file" in capsys.readouterr().err


def daily_files(directory: Path, days: int = 4) -> pd.DataFrame:
    """The first `days` days of a generated dataset written as Spark's sample of it ships: one CSV
    per day named by its ISO date, ISO timestamps, customer ids as floats (17850.0), plus the
    .crc and _SUCCESS files Spark writes beside them. Returns those days' rows, in file order."""
    frame, _ = generate_dataset(1000, 3)
    day = frame["InvoiceDate"].dt.strftime("%Y-%m-%d")
    kept = frame[day.isin(sorted(day.unique())[:days])].reset_index(drop=True)
    spark_style = kept.assign(
        InvoiceDate=kept["InvoiceDate"].dt.strftime("%Y-%m-%d %H:%M:%S"),
        CustomerID=[f"{float(c)}" if c else "" for c in kept["CustomerID"]],
    )
    directory.mkdir()
    for name, rows in spark_style.groupby(day[: len(kept)].to_numpy()):
        rows.to_csv(directory / f"{name}.csv", index=False)
        (directory / f".{name}.csv.crc").write_bytes(b"crc")
    (directory / "_SUCCESS").write_text("")
    return kept


def test_a_directory_of_daily_files_reads_in_name_order(tmp_path: Path) -> None:
    expected = daily_files(tmp_path / "by-day")
    result = load_transactions(tmp_path / "by-day")

    assert_canonical(result.frame)
    pd.testing.assert_frame_equal(result.frame, expected)
    assert result.malformed == []
    names = [Path(f).name for f in result.files]
    assert len(names) == 4 and names == sorted(names) and all(n.endswith(".csv") for n in names)
    assert result.source == str(tmp_path / "by-day")
    assert "(4 files)" in summary(result)


def test_a_glob_reads_the_files_it_matches(tmp_path: Path) -> None:
    expected = daily_files(tmp_path / "by-day")
    # Beside the daily files, a CSV the pattern leaves out (it would not even load).
    write(tmp_path / "by-day" / "notes.csv", "not,a,header")

    result = load_transactions(tmp_path / "by-day" / "2*.csv")

    assert len(result.files) == 4 and "notes.csv" not in str(result.files)
    pd.testing.assert_frame_equal(result.frame, expected)
    with pytest.raises(LoadError, match="notes.csv: not an Online Retail header"):
        load_transactions(tmp_path / "by-day")


def test_malformed_lines_name_their_file(tmp_path: Path) -> None:
    daily_files(tmp_path / "by-day")
    second = sorted((tmp_path / "by-day").glob("2*.csv"))[1]
    with second.open("a") as handle:
        handle.write("536999,85123A,HEART,many,2010-12-02 08:26:00,2.55,17850.0,France\n")
    lines = len(second.read_text().splitlines())

    result = load_transactions(tmp_path / "by-day")

    (bad,) = result.malformed
    assert (bad.file, bad.line) == (str(second), lines)
    assert bad.where == f"{second} line {lines}"
    assert f"  {second} line {lines}: Quantity 'many' is not an integer: 536999," in summary(result)


def test_an_empty_directory_or_a_glob_matching_nothing_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data here")
    with pytest.raises(FileNotFoundError, match="no .csv or .xlsx file in the directory"):
        load_transactions(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no .csv or .xlsx file in the pattern .*\*\.csv"):
        load_transactions(tmp_path / "empty" / "*.csv")
    with pytest.raises(SystemExit) as exit_info:
        produce_main(["--input", str(tmp_path / "empty" / "*.csv")])
    assert exit_info.value.code == 2


def test_the_producer_refuses_a_foreign_header_in_one_line(tmp_path: Path, capsys) -> None:
    daily_files(tmp_path / "by-day")
    write(tmp_path / "by-day" / "2099-01-01.csv", "not,a,header")
    with pytest.raises(SystemExit) as exit_info:
        produce_main(["--input", str(tmp_path / "by-day")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'by-day' / '2099-01-01.csv'}: not an Online")
    assert "Traceback" not in error


@pytest.mark.kafka
def test_the_producer_replays_a_directory_of_daily_files(
    tmp_path: Path, kafka_bootstrap: str, unique_topic
) -> None:
    expected = daily_files(tmp_path / "by-day")
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, kafka_topic=unique_topic("daily"))

    done = replay(tmp_path / "by-day", settings, partitions=1, progress=False)

    assert done.rows == len(expected) and done.malformed_lines == 0
    assert done.messages == expected["InvoiceNo"].nunique()
