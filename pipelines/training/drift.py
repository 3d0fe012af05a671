"""Drift of window N against window N-1: did the customers change, and did the model follow?

Plain functions over plain data (numpy, pandas, `ModelProfile`): nothing here runs Spark. The
caller hands in both windows' customers, already scored by the models (pipelines/training/
fitting.py does that in the job that fits the window).

- `psi_<feature>`, the population stability index of each feature: the new window's customers
  against the previous window's. Rule of thumb: below 0.1 stable, 0.1-0.25 moderate, above 0.25
  a real shift.
- `center_shift_max`, `center_shift_mean`: how far the matched cluster centers moved, in the
  units of the window comparison (pipelines/training/report.py: std units of the new model).
- `ari_previous_model`: adjusted Rand index between the previous and the new model's clusters of
  the same customers (the new window's). 1 means the new model splits them exactly as the old
  one did, whatever the ids; about 0 means no more agreement than chance.
- the segment map: for each new cluster, the previous cluster it continues (center matching),
  how far it moved, and which previous clusters its members came from.

In cumulative mode window N's customers include window N-1's, so PSI and ARI there measure how
much the newest data moved the whole, and are smaller than between tumbling windows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score

from pipelines.data.schema import FEATURES
from pipelines.training.report import ModelProfile, center_shifts

# Columns of the scored customers: the model's cluster of each, and the previous model's.
CLUSTER = "cluster"
PREVIOUS_CLUSTER = "previous_cluster"

# The metrics a run logs about its drift (`Drift.metrics`), also read back to chart it.
DRIFT_METRICS = (
    *(f"psi_{name}" for name in FEATURES),
    "center_shift_max",
    "center_shift_mean",
    "ari_previous_model",
)

# Deciles of the previous window: the customary PSI binning, and with a few thousand customers
# every bin still holds hundreds of them, so the shares are not noise.
PSI_BINS = 10
# An empty bin's share is raised to this, so its log stays finite; an empty bin facing a 1% bin
# then adds about 0.045, well below the 0.1 of "moderate".
PSI_EPSILON = 1e-4


def population_stability_index(
    reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS
) -> float:
    """PSI = sum over bins of (current share - reference share) * ln(current / reference share).

    Bins are cut at the reference's quantiles, on the raw values: quantile bins of a monotone
    transform (the recipe's signed log1p) hold the same customers, so transforming first would
    change nothing. Tied quantiles (NumInvoices is mostly 1, 2, 3) merge into one edge; a value
    on an edge counts in the bin above it.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected, actual = _shares(reference, edges), _shares(current, edges)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.maximum(counts / len(values), PSI_EPSILON)


def feature_psi(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    """`population_stability_index` of every feature, by name."""
    return {
        name: population_stability_index(reference[name].to_numpy(), current[name].to_numpy())
        for name in FEATURES
    }


@dataclass(frozen=True)
class Snapshot:
    """What drift reads of one window's fit."""

    profile: ModelProfile
    # One row per customer: FEATURES and CLUSTER, plus PREVIOUS_CLUSTER when the previous
    # window's model scored them too.
    customers: pd.DataFrame
    names: Sequence[str]  # segment name of each cluster (pipelines/training/segments.py)


def segment_map(current: Snapshot, previous: Snapshot) -> pd.DataFrame:
    """One row per new cluster: the previous cluster it continues and how its members moved.

    `continues` comes from matching centers (report.match_clusters); it is empty for a cluster
    beyond the previous k. `members_from_continued` is the share of the cluster's customers that
    the previous model put in that cluster; `most_members_from` the previous cluster holding most
    of them. When the two disagree, the segment kept its place but not its customers.
    """
    shifts = center_shifts(current.profile, previous.profile)
    members = pd.crosstab(current.customers[CLUSTER], current.customers[PREVIOUS_CLUSTER])
    rows = []
    for cluster, name in enumerate(current.names):
        old, shift = shifts.get(cluster, (None, None))
        counts = members.loc[cluster] if cluster in members.index else pd.Series(dtype="int64")
        total = int(counts.sum())
        rows.append(
            {
                "cluster": cluster,
                "name": name,
                "customers": total,
                "continues": old,
                "continues_name": None if old is None else previous.names[old],
                "center_shift_std": shift,
                "members_from_continued": (
                    float(counts.get(old, 0) / total) if old is not None and total else None
                ),
                "most_members_from": int(counts.idxmax()) if total else None,
            }
        )
    return pd.DataFrame(rows).astype({"continues": "Int64", "most_members_from": "Int64"})


@dataclass(frozen=True)
class Drift:
    """Window `window` against window `previous_window`."""

    window: int
    previous_window: int
    psi: dict[str, float]  # by feature
    ari: float
    segments: pd.DataFrame  # segment_map
    not_continued: tuple[int, ...]  # previous clusters no new cluster continues (k went down)

    def metrics(self) -> dict[str, float]:
        """The run's drift metrics, by MLflow key (DRIFT_METRICS)."""
        shifts = self.segments["center_shift_std"].dropna()
        values = (
            *(self.psi[name] for name in FEATURES),
            float(shifts.max()),
            float(shifts.mean()),
            self.ari,
        )
        return dict(zip(DRIFT_METRICS, values, strict=True))

    def segment_map_json(self) -> str:
        """The segment map as a dashboard reads it: follow one segment across retrainings.

        Windows, not version numbers, name the models: a run is logged before its version is
        registered; each version's `window` tag leads back from one to the other.
        """
        segments = self.segments.astype(object).where(self.segments.notna(), None)
        document = {
            "window": self.window,
            "previous_window": self.previous_window,
            "center_shift_units": f"std of window {self.window}'s scaler, after the transform",
            "segments": segments.to_dict(orient="records"),
            "not_continued": list(self.not_continued),
        }
        return json.dumps(document, indent=2, allow_nan=False)


def measure(current: Snapshot, previous: Snapshot) -> Drift:
    """Drift of `current` against `previous`; `current.customers` needs PREVIOUS_CLUSTER."""
    customers = current.customers
    segments = segment_map(current, previous)
    continued = set(segments["continues"].dropna().astype(int))
    return Drift(
        window=current.profile.window,
        previous_window=previous.profile.window,
        psi=feature_psi(previous.customers, customers),
        ari=float(adjusted_rand_score(customers[PREVIOUS_CLUSTER], customers[CLUSTER])),
        segments=segments,
        not_continued=tuple(c for c in range(previous.profile.k) if c not in continued),
    )


@dataclass(frozen=True)
class HistoryPoint:
    """One window on the drift chart."""

    window: int
    silhouette: float
    metrics: dict[str, float]  # Drift.metrics(); empty for a window with no previous one


def plot_history(history: Sequence[HistoryPoint], path: Path) -> None:
    """PSI per feature, center shifts, ARI and silhouette over the windows so far."""
    windows = [point.window for point in history]

    def series(key: str) -> list[float]:
        return [point.metrics.get(key, np.nan) for point in history]

    figure = Figure(figsize=(16, 3.6))
    axes = figure.subplots(1, 4)
    for i, name in enumerate(FEATURES):
        axes[0].plot(windows, series(f"psi_{name}"), "o-", color=f"C{i}", label=name)
    axes[0].axhline(0.25, color="grey", linestyle=":", label="0.25: a real shift")
    axes[0].set_title("PSI against the previous window")
    axes[0].legend(loc="best", fontsize="small")
    axes[1].plot(windows, series("center_shift_max"), "o-", color="C3", label="max")
    axes[1].plot(windows, series("center_shift_mean"), "o--", color="C4", label="mean")
    axes[1].set_title("center shift (std units)")
    axes[1].legend(loc="best", fontsize="small")
    axes[2].plot(windows, series("ari_previous_model"), "o-", color="C5")
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_title("ARI, previous vs new model")
    axes[3].plot(windows, [point.silhouette for point in history], "o-", color="C1")
    axes[3].set_title("silhouette")
    for axis in axes[:2]:  # PSI and distances are never negative: their size reads from 0
        axis.set_ylim(bottom=0)
    for axis in axes:
        axis.set_xticks(windows)
        axis.set_xlabel("window")
    figure.suptitle(f"drift up to window {windows[-1]} (the first window has no drift)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
