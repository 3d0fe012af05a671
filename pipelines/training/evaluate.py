"""How the recipe segments one UCI-format file: every candidate k, why it won or lost, the clusters.

No Kafka, no MLflow: the file is read with `pipelines.data.load.load_transactions` (CSV or XLSX,
either spelling of the columns), cleaned and turned into customer features exactly as training
does (`pipelines.training.features`) on a local SparkSession, and the candidates are fitted and
chosen by `pipelines.training.selection`, the code training runs. What it prints (or writes as
JSON) is what a person needs to judge the recipe on real data: per k the silhouette and the
cluster shares, which k are ineligible and why, the chosen k and its named segments
(`pipelines.training.segments.segment_profiles`, the profile every training run logs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from pipelines.data.load import load_transactions
from pipelines.data.schema import FEATURES
from pipelines.ingest.window_files import ARROW_SCHEMA
from pipelines.training.features import Cleaned, clean, customer_features
from pipelines.training.fitting import CustomerFit, Spec, fit_customers
from pipelines.training.selection import (
    FALLBACK,
    Candidate,
    Selection,
)


@dataclass(frozen=True)
class Evaluation:
    source: str
    malformed_lines: int
    cleaned: Cleaned
    spec: Spec
    fit: CustomerFit

    @property
    def customers(self) -> int:
        return self.fit.customers

    @property
    def candidates(self) -> list[Candidate]:
        return self.fit.candidates

    @property
    def selection(self) -> Selection:
        return self.fit.selection

    @property
    def profile(self) -> pd.DataFrame:
        return self.fit.segments.set_index("cluster")

    @property
    def chosen(self) -> Candidate:
        return self.selection.chosen

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable result (`--output`)."""
        selection = self.selection
        return {
            "source": self.source,
            "rows_read": self.cleaned.rows_read,
            "rows_kept": self.cleaned.rows_kept,
            "malformed_lines": self.malformed_lines,
            "dropped": self.cleaned.dropped,
            "customers": self.customers,
            "transform": self.spec.transform,
            "k_range": list(self.spec.k_range),
            "fixed_k": self.spec.k,
            "min_cluster_share": selection.min_cluster_share,
            "k_selection": selection.rule,
            "chosen_k": self.chosen.k,
            "candidates": [
                {
                    "k": c.k,
                    "silhouette": c.silhouette,
                    "training_cost": c.cost,
                    "cluster_sizes": list(c.sizes),
                    "cluster_shares": list(c.shares),
                    "min_cluster_share": c.min_share,
                    "eligible": c.eligible(selection.min_cluster_share),
                    "chosen": c is self.chosen,
                    "why_not": selection.why_not(c),
                }
                for c in self.candidates
            ],
            "clusters": [
                {"cluster": int(cluster), **{k: _plain(v) for k, v in row.items()}}
                for cluster, row in self.profile.iterrows()
            ],
        }


def _plain(value: Any) -> Any:
    """numpy scalars as the JSON numbers they are."""
    return value.item() if hasattr(value, "item") else value


def read_transactions(spark: SparkSession, path: Path) -> tuple[DataFrame, int]:
    """The file as a Spark DataFrame of the window files' schema, and its malformed line count."""
    loaded = load_transactions(path)
    table = pa.Table.from_pandas(loaded.frame, schema=ARROW_SCHEMA, preserve_index=False)
    return spark.createDataFrame(table), len(loaded.malformed)


def evaluate(spark: SparkSession, path: Path, **choices: Any) -> Evaluation:
    """Clean, build features, fit every candidate k and choose, as training does for a window.

    `choices` are the recipe's (k, k_range, min_cluster_share, transform, seed, ...): see Spec.
    """
    spec = Spec(**choices)
    transactions, malformed = read_transactions(spark, path)
    cleaned = clean(transactions)
    fit = fit_customers(customer_features(cleaned.rows), spec, str(path))
    return Evaluation(str(path), malformed, cleaned, spec, fit)


def report(evaluation: Evaluation) -> str:
    """The text the CLI prints."""
    e, selection = evaluation, evaluation.selection
    cleaned = e.cleaned
    ks = [c.k for c in e.candidates]
    if e.spec.k:
        tried = f"fixed at {e.spec.k}"
    else:
        tried = f"in {e.spec.k_range[0]}..{e.spec.k_range[1]}"
        if (ks[0], ks[-1]) != e.spec.k_range:
            tried += f" (tried {ks[0]}..{ks[-1]}: silhouette needs 2 <= k < customers)"
    dropped = ", ".join(f"{rule} {count:,}" for rule, count in cleaned.dropped.items())
    lines = [
        f"source:     {e.source}",
        f"rows:       {cleaned.rows_read:,} read, {cleaned.rows_kept:,} kept "
        f"(dropped: {dropped}; {e.malformed_lines:,} malformed lines skipped)",
        f"customers:  {e.customers:,}",
        f"recipe:     transform {e.spec.transform}, k {tried}, "
        f"min cluster share {selection.min_cluster_share:.1%}",
        "",
        f"{'k':>3}  {'silhouette':>10}  {'smallest':>8}  {'cluster shares':<44}  verdict",
    ]
    for c in e.candidates:
        shares = " ".join(f"{share:.1%}" for share in sorted(c.shares, reverse=True))
        verdict = "CHOSEN" if c is e.chosen else selection.why_not(c)
        lines.append(
            f"{c.k:>3}  {c.silhouette:>10.4f}  {c.min_share:>8.1%}  {shares:<44}  {verdict}"
        )
    lines.append("")
    chosen = e.chosen
    if selection.rule == FALLBACK:
        lines.append(
            f"no k has every cluster >= {selection.min_cluster_share:.1%}: fell back to k="
            f"{chosen.k}, whose smallest cluster is largest ({chosen.min_share:.1%})"
        )
    lines.append(f"chosen: k={chosen.k} ({selection.rule}), silhouette {chosen.silhouette:.4f}")
    lines.append("")
    lines.append(_format_profile(e.profile))
    return "\n".join(lines)


# The segment table as printed; the ratios behind the names are in --output.
SHOWN = ("name", "customers", "share", "revenue_share", *(f"median_{f}" for f in FEATURES))


def _format_profile(profile: pd.DataFrame) -> str:
    shown = profile.loc[:, list(SHOWN)].copy()
    for column in ("share", "revenue_share"):
        shown[column] = shown[column].map(lambda share: f"{share:.1%}")
    return shown.to_string(float_format=lambda value: f"{value:,.1f}")


def write_json(evaluation: Evaluation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
