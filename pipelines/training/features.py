"""Cleaning and per-customer features, computed in Spark from the window files.

Every cleaning rule is counted, so a run can say how much of its data it threw away and why. Rules
apply in the order of `CLEANING_RULES` and a row is charged to the first rule it breaks: the counts
add up to the rows dropped, and a cancelled line without a customer counts once, as a missing
customer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.data.schema import FEATURES

# name -> predicate that is true for a row the rule drops.
CLEANING_RULES: dict[str, Callable[[], Column]] = {
    "missing_customer_id": lambda: F.col("CustomerID").isNull() | (F.trim("CustomerID") == ""),
    "cancellation": lambda: F.upper(F.col("InvoiceNo")).startswith("C"),
    "non_positive_quantity": lambda: F.col("Quantity").isNull() | (F.col("Quantity") <= 0),
    "non_positive_price": lambda: F.col("UnitPrice").isNull() | (F.col("UnitPrice") <= 0),
}

_REASON = "_dropped_by"


@dataclass(frozen=True)
class Cleaned:
    """The rows kept by cleaning, with what was read and what each rule dropped."""

    rows: DataFrame
    rows_read: int
    dropped: dict[str, int]
    # InvoiceDate range of the kept rows, ISO formatted; None when nothing is kept.
    first_invoice_date: str | None
    last_invoice_date: str | None

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())


def clean(transactions: DataFrame) -> Cleaned:
    """Drop the rows no customer feature should see, counting them per rule in one Spark pass."""
    reason = F.lit(None).cast("string")
    for name, breaks in reversed(CLEANING_RULES.items()):
        reason = F.when(breaks(), F.lit(name)).otherwise(reason)
    tagged = transactions.withColumn(_REASON, reason)
    summary = tagged.groupBy(_REASON).agg(
        F.count("*").alias("rows"),
        F.min("InvoiceDate").alias("first"),
        F.max("InvoiceDate").alias("last"),
    )
    groups = {row[_REASON]: row for row in summary.collect()}
    kept = groups.get(None)
    return Cleaned(
        rows=tagged.filter(F.col(_REASON).isNull()).drop(_REASON),
        rows_read=sum(row["rows"] for row in groups.values()),
        dropped={name: groups[name]["rows"] if name in groups else 0 for name in CLEANING_RULES},
        first_invoice_date=_iso(kept["first"]) if kept else None,
        last_invoice_date=_iso(kept["last"]) if kept else None,
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat(sep=" ")


def customer_features(rows: DataFrame) -> DataFrame:
    """One row per customer: CustomerID and FEATURES, as docs/architecture.md defines them.

    Sorted by CustomerID: KMeans's initialisation samples the rows in order, and the order an
    aggregation emits them in depends on which shuffle block arrived first, which differs between
    runs and between `local[*]` and a cluster. Sorted, the same data gives the same model on both.
    """
    total_quantity, total_amount, num_invoices = FEATURES
    customers = rows.groupBy(F.trim("CustomerID").alias("CustomerID")).agg(
        F.sum("Quantity").cast("long").alias(total_quantity),
        F.sum(F.col("Quantity") * F.col("UnitPrice")).cast("double").alias(total_amount),
        F.countDistinct("InvoiceNo").cast("long").alias(num_invoices),
    )
    return customers.orderBy("CustomerID")
