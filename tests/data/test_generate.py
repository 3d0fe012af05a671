"""The generator: deterministic bytes, the real file's format and quirks, proportions that scale,
a complete side file, a lossless round trip through the loader, and recoverable segments."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from pipelines.data.generator import (
    DEFAULT_ROWS,
    MIN_ROWS,
    SEGMENTS,
    generate_dataset,
    segments_path,
    write_dataset,
)
from pipelines.data.load import load_transactions
from pipelines.data.schema import COLUMNS
from pipelines.generate import main

ROWS = 50_000
# The real file: 4,372 customers and 25,900 invoices in 541,909 lines.
REAL_CUSTOMERS_PER_ROW = 4_372 / DEFAULT_ROWS
REAL_INVOICES_PER_ROW = 25_900 / DEFAULT_ROWS


def features(frame: pd.DataFrame) -> pd.DataFrame:
    """TotalQuantity, TotalAmount, NumInvoices per customer after the documented cleaning."""
    kept = frame[
        frame["CustomerID"].notna()
        & ~frame["InvoiceNo"].str.startswith("C")
        & (frame["Quantity"] > 0)
        & (frame["UnitPrice"] > 0)
    ]
    return (
        kept.assign(Amount=kept["Quantity"] * kept["UnitPrice"])
        .groupby("CustomerID")
        .agg(
            TotalQuantity=("Quantity", "sum"),
            TotalAmount=("Amount", "sum"),
            NumInvoices=("InvoiceNo", "nunique"),
        )
    )


def test_same_seed_gives_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a.csv", rows=5_000, seed=3)
    again = write_dataset(tmp_path / "b.csv", rows=5_000, seed=3)
    other = write_dataset(tmp_path / "c.csv", rows=5_000, seed=4)
    assert first.read_bytes() == again.read_bytes()
    assert segments_path(first).read_bytes() == segments_path(again).read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_frame_has_the_schema_and_exact_row_count(
    dataset: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = dataset
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == ROWS
    assert frame["Quantity"].dtype == np.int64
    assert frame["UnitPrice"].dtype == np.float64
    assert frame["InvoiceDate"].dtype == "datetime64[ns]"
    for name in ("InvoiceNo", "StockCode", "Description", "CustomerID", "Country"):
        assert frame[name].dtype == object, name


def test_file_looks_like_the_real_one(written: Path) -> None:
    lines = written.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert len(lines) == ROWS + 1
    first = lines[1].split(",")
    assert first[0] == "536365"
    # M/D/YYYY H:MM without zero padding, as in 12/1/2010 8:26.
    assert re.fullmatch(r"12/1/2010 [1-9]\d?:\d\d", first[4]), first[4]
    assert any(re.search(r',"[^"]*,[^"]*",', line) for line in lines), "no quoted description"


def test_file_parses_with_the_loader_without_malformed_lines(written: Path) -> None:
    result = load_transactions(written)
    assert result.malformed == []
    assert len(result.frame) == ROWS
    assert result.frame["InvoiceDate"].min() >= pd.Timestamp("2010-12-01")
    assert result.frame["InvoiceDate"].max() < pd.Timestamp("2011-12-10")


def test_round_trip_through_the_loader_is_identical(
    written: Path, dataset: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    pd.testing.assert_frame_equal(load_transactions(written).frame, dataset[0])


def test_cancellations_are_c_invoices_with_negative_quantities(
    dataset: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = dataset
    cancelled = frame["InvoiceNo"].str.startswith("C")
    assert 0.015 < cancelled.mean() < 0.025
    assert (frame.loc[cancelled, "Quantity"] < 0).all()
    assert (frame.loc[~cancelled, "Quantity"] > 0).all()
    # A cancellation reverses a purchase of the same customer.
    pairs = frame[["CustomerID", "StockCode"]].itertuples(index=False, name=None)
    bought, returned = set(), set()
    for pair, is_cancelled in zip(pairs, cancelled, strict=True):
        (returned if is_cancelled else bought).add(pair)
    assert returned <= bought


def test_missing_customer_ids_cover_a_quarter_of_lines_on_whole_invoices(
    dataset: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = dataset
    assert 0.22 < frame["CustomerID"].isna().mean() < 0.28
    per_invoice = frame.groupby("InvoiceNo")["CustomerID"].agg(lambda ids: ids.isna().nunique())
    assert (per_invoice == 1).all()


def test_invoices_are_contiguous_consistent_and_chronological(
    dataset: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = dataset
    starts = frame["InvoiceNo"] != frame["InvoiceNo"].shift()
    assert starts.sum() == frame["InvoiceNo"].nunique()
    per_invoice = frame.groupby("InvoiceNo").nunique(dropna=False)
    assert (per_invoice[["InvoiceDate", "CustomerID", "Country"]] == 1).all().all()
    assert frame["InvoiceDate"].is_monotonic_increasing
    assert not (frame["InvoiceDate"].dt.dayofweek == 5).any()  # no Saturday trading


def test_countries_and_catalogue(dataset: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame, _ = dataset
    countries = frame["Country"].value_counts(normalize=True)
    assert len(countries) >= 30
    assert countries.index[0] == "United Kingdom" and countries.iloc[0] > 0.8
    assert 1_000 < frame["StockCode"].nunique() <= 5_000


def test_quantities_and_prices_are_heavy_tailed(dataset: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame, _ = dataset
    quantity, price = frame["Quantity"].abs(), frame.loc[frame["UnitPrice"] > 0, "UnitPrice"]
    assert quantity.max() > 100 * quantity.median()
    assert price.max() > 100 * price.median()
    assert quantity.quantile(0.99) > 10 * quantity.median()


@pytest.mark.parametrize("rows", [ROWS, 3 * ROWS])
def test_customers_and_invoices_scale_with_rows(rows: int) -> None:
    frame, segments = generate_dataset(rows, seed=7)
    assert len(frame) == rows
    assert len(segments) == round(rows * REAL_CUSTOMERS_PER_ROW)
    assert frame["CustomerID"].nunique() == len(segments)
    invoices_per_row = frame["InvoiceNo"].nunique() / rows
    assert invoices_per_row == pytest.approx(REAL_INVOICES_PER_ROW, rel=0.1)


def test_side_file_holds_the_segment_of_every_customer(written: Path) -> None:
    segments = pd.read_csv(segments_path(written), dtype=str)
    assert list(segments.columns) == ["CustomerID", "Segment"]
    customers = load_transactions(written).frame["CustomerID"].dropna().unique()
    assert set(segments["CustomerID"]) == set(customers)
    assert segments["CustomerID"].is_unique
    assert set(segments["Segment"]) == {segment.name for segment in SEGMENTS}


def test_segments_are_recovered_by_scaled_kmeans_with_k_by_silhouette(
    dataset: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    """What training relies on: linear standard scaling, k picked by silhouette over 2..8."""
    frame, segments = dataset
    table = features(frame)
    truth = segments.set_index("CustomerID")["Segment"].reindex(table.index)
    assert truth.notna().all()
    scaled = StandardScaler().fit_transform(table.to_numpy())
    fits = {k: KMeans(k, n_init=10, random_state=0).fit_predict(scaled) for k in range(2, 9)}
    best = max(fits, key=lambda k: silhouette_score(scaled, fits[k]))
    assert best == len(SEGMENTS)
    assert adjusted_rand_score(truth, fits[best]) >= 0.8


def test_too_few_rows_are_refused() -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_ROWS}"):
        generate_dataset(MIN_ROWS - 1)
    frame, _ = generate_dataset(MIN_ROWS)
    assert len(frame) == MIN_ROWS


def test_cli_writes_both_files_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out" / "retail.csv"
    assert main(["--rows", "2000", "--seed", "5", "--output", str(output)]) == 0
    assert output.read_bytes() == write_dataset(tmp_path / "again.csv", 2_000, 5).read_bytes()
    assert segments_path(output).is_file()
    printed = capsys.readouterr().out
    assert "2,000 rows" in printed and "customers" in printed and "invoices" in printed
