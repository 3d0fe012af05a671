"""The generator: deterministic bytes, the real file's format and quirks, proportions that scale,
a complete side file, a lossless round trip through the loader, the real file's published
figures at the default size, and segments that a log-space clustering recovers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

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
from pipelines.training.features import CLEANING_RULES

ROWS = 50_000
# The real file: 4,372 customers and 25,900 invoices in 541,909 lines.
REAL_CUSTOMERS_PER_ROW = 4_372 / DEFAULT_ROWS
REAL_INVOICES_PER_ROW = 25_900 / DEFAULT_ROWS

# Published figures of the real file. Per customer, after cleaning (4,338 customers, 397,884
# rows): p10, p50, p90, p99, p99.9 and max of each feature.
QUANTILES = (0.1, 0.5, 0.9, 0.99, 0.999, 1.0)
REAL_CUSTOMER_QUANTILES = {
    "TotalQuantity": (76, 379, 2_118, 11_047, 72_792, 196_915),
    "TotalAmount": (157, 675, 3_647, 19_881, 137_452, 280_206),
    "NumInvoices": (1, 2, 9, 30, 92, 209),
}
# Rows of the raw file: name -> (how to count it on a frame, the real count).
REAL_ROW_FACTS = {
    "rows": (len, 541_909),
    "invoices": (lambda f: f["InvoiceNo"].nunique(), 25_900),
    "cancelled invoices": (lambda f: f["InvoiceNo"][_cancelled(f)].nunique(), 3_836),
    "rows on cancelled invoices": (lambda f: int(_cancelled(f).sum()), 9_288),
    "customers": (lambda f: f["CustomerID"].nunique(), 4_372),
    "rows without CustomerID": (lambda f: int(f["CustomerID"].isna().sum()), 135_080),
    "rows with Quantity <= 0": (lambda f: int((f["Quantity"] <= 0).sum()), 10_624),
    "rows with UnitPrice <= 0": (lambda f: int((f["UnitPrice"] <= 0).sum()), 2_517),
    "rows without Description": (lambda f: int((f["Description"] == "").sum()), 1_454),
    "exact duplicate rows": (lambda f: int(f.duplicated().sum()), 5_268),
    "max |Quantity|": (lambda f: int(f["Quantity"].abs().max()), 80_995),
    "max UnitPrice": (lambda f: float(f["UnitPrice"].max()), 38_970),
}

# pipelines.features.CLEANING_RULES, the same rules on a pandas frame: name -> rows it drops.
CLEANING = {
    "missing_customer_id": lambda t: t["CustomerID"].isna() | (t["CustomerID"].str.strip() == ""),
    "cancellation": lambda t: t["InvoiceNo"].str.upper().str.startswith("C"),
    "non_positive_quantity": lambda t: t["Quantity"].isna() | (t["Quantity"] <= 0),
    "non_positive_price": lambda t: t["UnitPrice"].isna() | (t["UnitPrice"] <= 0),
}

# The tail-robust recipe training is to use: k in 3..8 by silhouette, every cluster >= 2%.
KS = range(3, 9)
MIN_SHARE, MAX_SHARE = 0.02, 0.6


def _cancelled(frame: pd.DataFrame) -> pd.Series:
    return frame["InvoiceNo"].str.startswith("C")


@pytest.fixture(scope="module")
def default() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The default dataset: the real file's size, the default seed."""
    return generate_dataset()


@pytest.fixture(scope="module")
def default_features(default: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return features(default[0])


def cleaned(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows features.clean keeps."""
    dropped = np.logical_or.reduce([rule(frame).fillna(True) for rule in CLEANING.values()])
    return frame[~dropped]


def features(frame: pd.DataFrame) -> pd.DataFrame:
    """TotalQuantity, TotalAmount, NumInvoices per customer, as features.customer_features."""
    kept = cleaned(frame)
    return (
        kept.assign(Amount=kept["Quantity"] * kept["UnitPrice"])
        .groupby(kept["CustomerID"].str.strip())
        .agg(
            TotalQuantity=("Quantity", "sum"),
            TotalAmount=("Amount", "sum"),
            NumInvoices=("InvoiceNo", "nunique"),
        )
    )


def log_scaled(table: pd.DataFrame) -> np.ndarray:
    values = table.to_numpy(dtype="float64")
    return StandardScaler().fit_transform(np.sign(values) * np.log1p(np.abs(values)))


def chosen_clustering(points: np.ndarray) -> np.ndarray:
    """Labels at the k of best silhouette among those whose every cluster holds MIN_SHARE."""
    best, best_score = None, -1.0
    with threadpool_limits(1):  # a few thousand points: threads only contend on a shared machine
        for k in KS:
            labels = KMeans(k, n_init=10, random_state=0).fit_predict(points)
            if np.bincount(labels).min() < MIN_SHARE * len(labels):
                continue
            score = silhouette_score(points, labels)
            if score > best_score:
                best, best_score = labels, score
    assert best is not None, "no k in 3..8 gives every cluster 2% of the customers"
    return best


def test_cleaning_here_mirrors_the_spark_rules() -> None:
    assert list(CLEANING) == list(CLEANING_RULES)


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
    cancelled = _cancelled(frame)
    assert cancelled.mean() == pytest.approx(9_288 / DEFAULT_ROWS, rel=0.05)
    assert (frame.loc[cancelled, "Quantity"] < 0).all()
    # Elsewhere only stock write-offs: anonymous, at price 0, as in the real file.
    written_off = ~cancelled & (frame["Quantity"] <= 0)
    assert written_off.any()
    assert frame.loc[written_off, "CustomerID"].isna().all()
    assert (frame.loc[written_off, "UnitPrice"] == 0).all()
    # A cancellation reverses a purchase of the same customer.
    pairs = frame[["CustomerID", "StockCode"]].itertuples(index=False, name=None)
    bought, returned = set(), set()
    for pair, is_cancelled in zip(pairs, cancelled, strict=True):
        (returned if is_cancelled else bought).add(pair)
    assert returned <= bought


def test_missing_customer_ids_cover_the_real_share_of_lines_on_whole_invoices(
    dataset: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = dataset
    assert frame["CustomerID"].isna().mean() == pytest.approx(135_080 / DEFAULT_ROWS, rel=0.02)
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


@pytest.mark.parametrize("feature", list(REAL_CUSTOMER_QUANTILES))
def test_default_customers_have_the_real_quantiles_within_a_factor_of_2(
    default_features: pd.DataFrame, feature: str
) -> None:
    generated = default_features[feature].quantile(QUANTILES).to_numpy()
    ratio = generated / np.array(REAL_CUSTOMER_QUANTILES[feature])
    assert ((ratio >= 0.5) & (ratio <= 2)).all(), dict(zip(QUANTILES, generated, strict=True))


@pytest.mark.parametrize("feature", ["TotalQuantity", "TotalAmount"])
def test_default_customers_are_as_skewed_as_real_ones(
    default_features: pd.DataFrame, feature: str
) -> None:
    assert default_features[feature].skew() >= 10  # real: 20.4 and 19.3


def test_default_cleaning_keeps_the_real_share_of_rows_and_customers(
    default: tuple[pd.DataFrame, pd.DataFrame], default_features: pd.DataFrame
) -> None:
    assert len(cleaned(default[0])) == pytest.approx(397_884, rel=0.2)
    assert len(default_features) == pytest.approx(4_338, rel=0.2)


@pytest.mark.parametrize("fact", list(REAL_ROW_FACTS))
def test_default_rows_match_the_real_file_within_20_percent(
    default: tuple[pd.DataFrame, pd.DataFrame], fact: str
) -> None:
    count, real = REAL_ROW_FACTS[fact]
    assert count(default[0]) == pytest.approx(real, rel=0.2)


def test_bad_debt_is_adjusted_on_a_few_a_invoices_two_negative(
    default: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, _ = default
    adjusted = frame[frame["InvoiceNo"].str.startswith("A")]
    assert set(adjusted["StockCode"]) == {"B"}
    assert set(adjusted["Description"]) == {"Adjust bad debt"}
    assert adjusted["CustomerID"].isna().all()
    assert (adjusted["UnitPrice"] < 0).sum() == 2
    assert (frame["UnitPrice"] < 0).sum() == 2  # nowhere else


def test_segments_are_recovered_in_log_space_but_not_from_raw_features(
    default: tuple[pd.DataFrame, pd.DataFrame], default_features: pd.DataFrame
) -> None:
    """The whole year: signed log1p -> scaling -> KMeans finds the segments; the raw features,
    dominated by a few giant customers, do not, even told the true k."""
    table, segments = default_features, default[1]
    truth = segments.set_index("CustomerID")["Segment"].reindex(table.index)
    assert truth.notna().all()

    labels = chosen_clustering(log_scaled(table))
    shares = np.bincount(labels) / len(labels)
    assert len(shares) >= 3 and shares.max() <= MAX_SHARE
    found = adjusted_rand_score(truth, labels)
    assert found >= 0.85

    raw = StandardScaler().fit_transform(table.to_numpy(dtype="float64"))
    with threadpool_limits(1):
        baseline = KMeans(len(SEGMENTS), n_init=10, random_state=0).fit_predict(raw)
    assert adjusted_rand_score(truth, baseline) < found - 0.3


@pytest.mark.parametrize("windows", [1, 2])
def test_the_first_windows_alone_still_cluster_into_sizeable_groups(
    default: tuple[pd.DataFrame, pd.DataFrame], windows: int
) -> None:
    """Windows are consecutive thirds of the (chronological) rows, taken cumulatively."""
    frame, _ = default
    table = features(frame.iloc[: len(frame) * windows // 3])
    shares = np.bincount(chosen_clustering(log_scaled(table))) / len(table)
    assert len(shares) >= 3 and shares.max() <= MAX_SHARE and shares.min() >= MIN_SHARE


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
