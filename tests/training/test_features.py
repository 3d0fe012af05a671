"""Cleaning rules and per-customer features, against hand-counted rows and a pandas reference."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from pipelines.data.generator import generate_dataset
from pipelines.data.schema import COLUMNS, FEATURES
from pipelines.training.features import CLEANING_RULES, clean, customer_features

pytestmark = pytest.mark.spark

# The schema Spark reads from a window file.
SPARK_SCHEMA = (
    "InvoiceNo string, StockCode string, Description string, Quantity long, "
    "InvoiceDate timestamp, UnitPrice double, CustomerID string, Country string"
)


def frame(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """Window rows from (InvoiceNo, Quantity, UnitPrice, CustomerID, day of January 2011)."""
    data = pd.DataFrame(
        [
            (invoice, "85123A", "LANTERN", quantity, datetime(2011, 1, day), price, customer, "UK")
            for invoice, quantity, price, customer, day in rows
        ],
        columns=list(COLUMNS),
    )
    return spark.createDataFrame(data, schema=SPARK_SCHEMA)


@pytest.fixture(scope="module")
def hand_rows(spark: SparkSession):
    return frame(
        spark,
        [
            ("536365", 6, 2.55, "17850", 1),  # kept
            ("536365", 2, 3.39, "17850", 2),  # kept: same invoice, counted once
            ("536366", 3, 1.00, " 17850 ", 3),  # kept: same customer once trimmed
            ("536367", 10, 0.50, "13047", 4),  # kept
            ("536368", 1, 1.00, None, 5),  # missing customer
            ("536369", 1, 1.00, "  ", 6),  # missing customer (blank)
            ("C536370", -1, 2.55, None, 7),  # missing customer first: charged once, there
            ("C536371", -2, 2.55, "17850", 8),  # cancellation
            ("c536372", -2, 2.55, "13047", 9),  # cancellation, lower case
            ("536373", 0, 2.55, "13047", 10),  # non-positive quantity
            ("536374", -5, 2.55, "13047", 11),  # non-positive quantity without a C
            ("536375", 4, 0.0, "13047", 12),  # non-positive price
            ("536376", 4, -11062.06, "13047", 13),  # non-positive price (bad debt line)
        ],
    )


def test_each_rule_is_counted_once_in_rule_order(hand_rows) -> None:
    cleaned = clean(hand_rows)

    assert list(cleaned.dropped) == list(CLEANING_RULES)
    assert cleaned.dropped == {
        "missing_customer_id": 3,
        "cancellation": 2,
        "non_positive_quantity": 2,
        "non_positive_price": 2,
    }
    assert (cleaned.rows_read, cleaned.rows_kept) == (13, 4)
    assert cleaned.rows.count() == 4
    assert cleaned.first_invoice_date == "2011-01-01 00:00:00"
    assert cleaned.last_invoice_date == "2011-01-04 00:00:00"


def test_features_follow_the_design_definitions(hand_rows) -> None:
    features = customer_features(clean(hand_rows).rows).toPandas().set_index("CustomerID")

    assert list(features.columns) == list(FEATURES)
    assert features.loc["17850", "TotalQuantity"] == 6 + 2 + 3
    assert features.loc["17850", "TotalAmount"] == pytest.approx(6 * 2.55 + 2 * 3.39 + 3 * 1.00)
    assert features.loc["17850", "NumInvoices"] == 2
    assert features.loc["13047"].tolist() == pytest.approx([10, 5.0, 1])
    assert str(features["TotalQuantity"].dtype) == "int64"
    assert str(features["NumInvoices"].dtype) == "int64"


def test_a_window_with_nothing_left_reports_no_dates(spark: SparkSession) -> None:
    cleaned = clean(frame(spark, [("C1", -1, 1.0, "1", 1)]))

    assert cleaned.rows_kept == 0
    assert cleaned.first_invoice_date is None and cleaned.last_invoice_date is None


def test_generated_data_matches_a_pandas_reference(spark: SparkSession) -> None:
    transactions, _ = generate_dataset(20_000, seed=3)
    transactions["InvoiceDate"] = transactions["InvoiceDate"].astype("datetime64[us]")
    cleaned = clean(spark.createDataFrame(transactions))
    features = customer_features(cleaned.rows).toPandas().set_index("CustomerID").sort_index()

    t = transactions
    keep = (
        t["CustomerID"].notna()
        & ~t["InvoiceNo"].str.upper().str.startswith("C")
        & (t["Quantity"] > 0)
        & (t["UnitPrice"] > 0)
    )
    kept = t[keep].assign(Amount=t["Quantity"] * t["UnitPrice"])
    expected = kept.groupby("CustomerID").agg(
        TotalQuantity=("Quantity", "sum"),
        TotalAmount=("Amount", "sum"),
        NumInvoices=("InvoiceNo", "nunique"),
    )
    assert cleaned.rows_read == len(t)
    assert cleaned.rows_kept == int(keep.sum())
    assert cleaned.dropped["missing_customer_id"] == int(t["CustomerID"].isna().sum())
    pd.testing.assert_frame_equal(features, expected.sort_index(), check_dtype=False)
