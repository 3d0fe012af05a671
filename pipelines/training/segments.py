"""Segments a person can read: each cluster of a model profiled in original units and named.

Segments (`segment_profiles`) describe each cluster by the customers the model puts in it: how
many and what share of all customers, what share of the revenue (sum of TotalAmount), and the
median TotalQuantity, TotalAmount, NumInvoices and units per invoice (TotalQuantity/NumInvoices).
Medians, not centers: a few huge customers move a center, not a median.

Each segment gets a name from three ratios of its medians to the medians of all customers:
frequency (NumInvoices), value (TotalAmount) and basket (units per invoice).

    basket >= 4                      -> "wholesale" (big orders say more than how often or how much)
    otherwise, by frequency:  >= 4   -> "loyal",  >= 1.5 -> "regular",  else "occasional"
              and value >= 3         -> " high-value" appended, e.g. "loyal high-value"
    no customers at all              -> "empty"

Names depend only on the profile, never on the arbitrary cluster ids, so the same fit gets the
same names. When several segments of one model earn the same name, they are numbered " 1", " 2",
... in ascending order of median TotalAmount (then median NumInvoices, then cluster id): e.g.
"occasional 1" spends less than "occasional 2". The ratios are in the profile, so every name can
be checked against its numbers.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame

from pipelines.data.schema import FEATURES
from pipelines.training.recipe import PREDICTION_COL
from pipelines.training.scoring import place

# Name thresholds: ratios of a segment's median to the median of all customers (module docstring).
WHOLESALE_BASKET = 4.0
LOYAL_FREQUENCY = 4.0
REGULAR_FREQUENCY = 1.5
HIGH_VALUE = 3.0

UNITS_PER_INVOICE = "UnitsPerInvoice"
MEDIANS = (*FEATURES, UNITS_PER_INVOICE)
SEGMENT_COLUMNS = (
    "cluster",
    "name",
    "customers",
    "share",
    "revenue",
    "revenue_share",
    *(f"median_{m}" for m in MEDIANS),
    "frequency_ratio",
    "value_ratio",
    "basket_ratio",
)


def segment_profiles(model: PipelineModel, features: DataFrame) -> pd.DataFrame:
    """One row per cluster of `model` (all k, empty ones too): size, revenue, medians, name.

    `features` holds one row per customer with the FEATURES columns (other columns are ignored),
    as pipelines/training/features.py makes them; the model assigns the clusters, in one Spark
    job, and `profile_segments` does the rest.
    """
    rows = place(features, model)
    return profile_segments(
        rows[list(FEATURES)], rows[PREDICTION_COL].to_numpy(), model.stages[-1].getK()
    )


def profile_segments(customers: pd.DataFrame, labels: np.ndarray, k: int) -> pd.DataFrame:
    """The segments of a k-cluster model that puts `customers` (FEATURES columns, one row per
    customer) in clusters `labels`. Columns: SEGMENT_COLUMNS; shares are fractions of all the
    customers and of their revenue. Medians as Spark's `median` takes them (nulls, here units
    per invoice of a customer without invoices, left out)."""
    quantity, amount, invoices = FEATURES
    frame = customers.loc[:, list(FEATURES)].astype(float)
    frame[UNITS_PER_INVOICE] = (frame[quantity] / frame[invoices]).where(frame[invoices] != 0)

    groups = frame.groupby(np.asarray(labels, dtype="int64"))
    clusters = pd.DataFrame(
        {
            "customers": groups.size(),
            "revenue": groups[amount].sum(),
            **{f"median_{m}": groups[m].median() for m in MEDIANS},
        }
    )
    overall = {
        "customers": len(frame),
        "revenue": frame[amount].sum(),
        **{f"median_{m}": frame[m].median() for m in MEDIANS},
    }
    clusters = clusters.reindex(range(k))
    clusters.index.name = "cluster"
    clusters["customers"] = clusters["customers"].fillna(0).astype("int64")
    clusters["revenue"] = clusters["revenue"].fillna(0.0)
    clusters["share"] = clusters["customers"] / overall["customers"]
    clusters["revenue_share"] = clusters["revenue"] / overall["revenue"]
    for ratio, measure in (
        ("frequency_ratio", invoices),
        ("value_ratio", amount),
        ("basket_ratio", UNITS_PER_INVOICE),
    ):
        base = overall[f"median_{measure}"]
        clusters[ratio] = clusters[f"median_{measure}"] / base if base and base > 0 else np.nan
    clusters["name"] = segment_names(clusters)
    return clusters.reset_index()[list(SEGMENT_COLUMNS)]


def segment_name(customers: int, frequency: float, value: float, basket: float) -> str:
    """The name of one segment from its ratios to all customers' medians (module docstring)."""
    if customers == 0:
        return "empty"
    if basket >= WHOLESALE_BASKET:
        return "wholesale"
    if frequency >= LOYAL_FREQUENCY:
        name = "loyal"
    elif frequency >= REGULAR_FREQUENCY:
        name = "regular"
    else:
        name = "occasional"
    return f"{name} high-value" if value >= HIGH_VALUE else name


def segment_names(clusters: pd.DataFrame) -> pd.Series:
    """A unique name per cluster: `segment_name`, numbered where several clusters share one."""
    names = pd.Series(
        [
            segment_name(int(row.customers), row.frequency_ratio, row.value_ratio, row.basket_ratio)
            for row in clusters.itertuples()
        ],
        index=clusters.index,
    )
    _, amount, invoices = FEATURES
    order = clusters.assign(name=names).sort_values(
        [f"median_{amount}", f"median_{invoices}"], kind="stable", na_position="first"
    )
    unique = names.copy()
    for name, group in order.groupby("name", sort=False):
        if len(group) > 1:
            for number, cluster in enumerate(group.index, start=1):
                unique[cluster] = f"{name} {number}"
    return unique


def segment_records(segments: pd.DataFrame) -> list[dict[str, Any]]:
    """The segments as plain JSON-ready records: what the registry keeps and `GET /models` shows."""
    records = []
    for row in segments.itertuples(index=False):
        medians = {m: getattr(row, f"median_{m}") for m in FEATURES}
        records.append(
            {
                "id": int(row.cluster),
                "name": row.name,
                "customers": int(row.customers),
                "share": _rounded(row.share, 4),
                "revenue_share": _rounded(row.revenue_share, 4),
                "median": {m: _rounded(v, 2) for m, v in medians.items()},
            }
        )
    return records


def segments_json(segments: pd.DataFrame) -> str:
    """`segment_records` as compact JSON (the registered version's `segments` tag)."""
    return json.dumps(segment_records(segments), separators=(",", ":"), allow_nan=False)


def segment_names_line(segments: pd.DataFrame) -> str:
    """The names by cluster id, for a tag a person reads: "0 occasional; 1 wholesale; ..." """
    return "; ".join(f"{row.cluster} {row.name}" for row in segments.itertuples(index=False))


def describe_segments(segments: pd.DataFrame) -> str:
    """For a version's description: "0 occasional (63% of customers, 21% of revenue); ..." """
    return "; ".join(
        f"{row.cluster} {row.name} ({row.share:.0%} of customers, "
        f"{row.revenue_share:.0%} of revenue)"
        for row in segments.itertuples(index=False)
    )


def _rounded(value: float, digits: int) -> float | None:
    """Rounded, to keep the records short; NaN (an empty segment's median) becomes null."""
    return None if value is None or pd.isna(value) else round(float(value), digits)
