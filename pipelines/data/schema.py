"""The transaction schema every stage agrees on: the UCI Online Retail columns.

Online Retail II spells three columns differently; `canonical_name` folds them onto the original
spelling so nothing downstream has to care which file it came from.
"""

from __future__ import annotations

from pipelines.contract import FEATURES as FEATURES  # re-exported: see below

COLUMNS: tuple[str, ...] = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)

# Online Retail II header spellings -> canonical.
ALIASES: dict[str, str] = {
    "Invoice": "InvoiceNo",
    "Price": "UnitPrice",
    "Customer ID": "CustomerID",
}

# The per-customer features (the model's inputs and the HTTP API's fields) are defined, with their
# types and an example, in pipelines/contract.py; FEATURES is re-exported here for older imports.

# Bumped whenever the Kafka message layout changes; consumers reject versions they do not know.
MESSAGE_SCHEMA_VERSION = 1


def canonical_name(column: str) -> str:
    name = column.strip()
    return ALIASES.get(name, name)


def is_cancellation(invoice_no: str) -> bool:
    return invoice_no.upper().startswith("C")
