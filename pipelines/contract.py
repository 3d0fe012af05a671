"""The feature contract: the three per-customer features, defined once for every stage.

Training computes them (pipelines/training/features.py) and casts each to its `spark_type`; the
model's MLflow signature types them with the same names (`long`, `double` are Spark's and
MLflow's spelling alike); the server's request schema accepts each as its `json_type`; the docs,
the OpenAPI example, tests and benchmarks use `EXAMPLE_RECORD`, the request the project has always
shown. Nothing here imports pyspark, so the server (which runs without a JVM) imports it too.

`json_type` is what the HTTP API accepts, which is looser than what training produces: the
totals are any finite number (the model computes in float64 either way); only NumInvoices must be
a whole number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Feature:
    """One model input: its column/field name, types, meaning and example value."""

    name: str
    spark_type: Literal["long", "double"]  # training's column type and the signature's ColSpec
    json_type: Literal["number", "integer"]  # what a request may send
    description: str
    example: int | float


CONTRACT: tuple[Feature, ...] = (
    Feature(
        "TotalQuantity",
        "long",
        "number",
        "Units bought: sum(Quantity) over the customer's kept transaction lines",
        100,
    ),
    Feature(
        "TotalAmount",
        "double",
        "number",
        "Money spent: sum(Quantity * UnitPrice) over the customer's kept transaction lines",
        2000.0,
    ),
    Feature(
        "NumInvoices",
        "long",
        "integer",
        "Distinct invoices among the customer's kept transaction lines",
        5,
    ),
)

# The model's inputs and the HTTP API's fields, in this order.
FEATURES: tuple[str, ...] = tuple(feature.name for feature in CONTRACT)

# One valid request body: `{"TotalQuantity": 100, "TotalAmount": 2000.0, "NumInvoices": 5}`.
EXAMPLE_RECORD: dict[str, int | float] = {feature.name: feature.example for feature in CONTRACT}


def feature(name: str) -> Feature:
    """The contract's entry for `name`; KeyError names the features there are."""
    for candidate in CONTRACT:
        if candidate.name == name:
            return candidate
    raise KeyError(f"{name!r} is not a feature; the features are {', '.join(FEATURES)}")


def spoken_list() -> str:
    """The feature names as prose: "TotalQuantity, TotalAmount and NumInvoices"."""
    *rest, last = FEATURES
    return f"{', '.join(rest)} and {last}" if rest else last
