"""How the recipe segments one UCI-format file: every candidate k, why it won or lost, the clusters.

No Kafka, no MLflow: the file is read with `pipelines.data.load.load_transactions` (CSV or XLSX,
either spelling of the columns), cleaned and turned into customer features exactly as training
does (`pipelines.training.features`) on a local SparkSession, and the candidates are fitted and
chosen by `pipelines.training.selection`, the code training runs. What it prints (or writes as
JSON) is what a person needs to judge the recipe on real data: per k the silhouette and the
cluster shares, which k are ineligible and why, the chosen k and its named segments
(`pipelines.training.report.segment_profiles`, the profile every training run logs).
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
from pipelines.training.feature_transform import DEFAULT_TRANSFORM
from pipelines.training.features import Cleaned, clean, customer_features
from pipelines.training.report import segment_profiles
from pipelines.training.selection import (
    DEFAULT_K_RANGE,
    DEFAULT_MIN_CLUSTER_SHARE,
    FALLBACK,
    Candidate,
    Selection,
    candidate_ks,
    choose,
    fit_candidates,
)


@dataclass(frozen=True)
class Evaluation:
    source: str
    malformed_lines: int
    cleaned: Cleaned
    customers: int
    transform: str
    k_range: tuple[int, int]
    fixed_k: int | None
    candidates: list[Candidate]
    selection: Selection
    profile: pd.DataFrame

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
            "transform": self.transform,
            "k_range": list(self.k_range),
            "fixed_k": self.fixed_k,
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


def evaluate(
    spark: SparkSession,
    path: Path,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    k: int | None = None,
    min_cluster_share: float = DEFAULT_MIN_CLUSTER_SHARE,
    transform: str = DEFAULT_TRANSFORM,
    seed: int = 42,
    max_iter: int = 50,
) -> Evaluation:
    """Clean, build features, fit every candidate k and choose, as training does for a window."""
    transactions, malformed = read_transactions(spark, path)
    cleaned = clean(transactions)
    features = customer_features(cleaned.rows).cache()
    try:
        customers = features.count()
        ks = candidate_ks(k, k_range, customers)
        candidates = fit_candidates(
            features, customers, ks, seed, max_iter, "euclidean", transform=transform
        )
        selection = choose(candidates, min_cluster_share, fixed=bool(k))
        profile = segment_profiles(selection.chosen.model, features).set_index("cluster")
    finally:
        features.unpersist()
    return Evaluation(
        source=str(path),
        malformed_lines=malformed,
        cleaned=cleaned,
        customers=customers,
        transform=transform,
        k_range=k_range,
        fixed_k=k,
        candidates=candidates,
        selection=selection,
        profile=profile,
    )


def report(evaluation: Evaluation) -> str:
    """The text the CLI prints."""
    e, selection = evaluation, evaluation.selection
    cleaned = e.cleaned
    ks = [c.k for c in e.candidates]
    if e.fixed_k:
        tried = f"fixed at {e.fixed_k}"
    else:
        tried = f"in {e.k_range[0]}..{e.k_range[1]}"
        if (ks[0], ks[-1]) != e.k_range:
            tried += f" (tried {ks[0]}..{ks[-1]}: silhouette needs 2 <= k < customers)"
    dropped = ", ".join(f"{rule} {count:,}" for rule, count in cleaned.dropped.items())
    lines = [
        f"source:     {e.source}",
        f"rows:       {cleaned.rows_read:,} read, {cleaned.rows_kept:,} kept "
        f"(dropped: {dropped}; {e.malformed_lines:,} malformed lines skipped)",
        f"customers:  {e.customers:,}",
        f"recipe:     transform {e.transform}, k {tried}, "
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
