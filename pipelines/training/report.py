"""The readable artifacts of a training run: cluster centers and the change since last window.

Centers are reported in original units (quantities, money, invoices) because that is what a person
reading a segment needs; distances between models are measured where KMeans works: after the
recipe's transform, in standard deviations of the current model's scaler.

The segments of a model and their names are pipelines/training/segments.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.ml import PipelineModel
from pyspark.ml.feature import SQLTransformer
from scipy.optimize import linear_sum_assignment

from pipelines.data.schema import FEATURES
from pipelines.training import feature_transform

COMPARISON_COLUMNS = (
    "measure",
    "cluster",
    "previous_cluster",
    "previous",
    "current",
    "change",
    "previous_model",
)


@dataclass(frozen=True)
class ModelProfile:
    """What the reports need from one trained model, in plain numbers."""

    window: int
    k: int
    silhouette: float
    centers: pd.DataFrame  # index: cluster; columns: FEATURES (original units) and "size"
    # The centers where the scaler sees them (after the recipe's transform, before scaling), and
    # the scaler's std there: distances between models are measured in that space.
    model_centers: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, window: int, model: PipelineModel, silhouette: float) -> ModelProfile:
        scaler, kmeans = model.stages[-2:]
        mean, std = scaler.mean.toArray(), scaler.std.toArray()
        scaled = np.array(kmeans.clusterCenters())
        model_centers = mean + scaled * std
        original = model_centers
        if isinstance(model.stages[0], SQLTransformer):  # the recipe's signed log1p
            original = feature_transform.inverse(model_centers)
        centers = pd.DataFrame(original, columns=list(FEATURES))
        centers.index.name = "cluster"
        centers["size"] = kmeans.summary.clusterSizes
        return cls(window, kmeans.getK(), silhouette, centers, model_centers, std)

    def in_std_units(self, of: ModelProfile) -> np.ndarray:
        """`of`'s centers in this model's space, divided by its std (a 0 std counts as 1)."""
        return of.model_centers / np.where(self.std > 0, self.std, 1.0)


def write_centers(profile: ModelProfile, path: Path) -> None:
    profile.centers.round(4).to_csv(path)


def plot_profile(profile: ModelProfile, path: Path) -> None:
    """One bar chart per feature (center in original units) and one of cluster sizes."""
    columns = [*FEATURES, "size"]
    figure = Figure(figsize=(4 * len(columns), 3.6))
    axes = figure.subplots(1, len(columns))
    clusters = profile.centers.index.to_numpy()
    for axis, column in zip(axes, columns, strict=True):
        axis.bar(clusters, profile.centers[column], color=f"C{columns.index(column)}")
        axis.set_xticks(clusters)
        axis.set_title("customers" if column == "size" else f"{column} (center)")
        axis.set_xlabel("cluster")
    figure.suptitle(f"window {profile.window}: k={profile.k}, silhouette={profile.silhouette:.3f}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def match_clusters(current: ModelProfile, previous: ModelProfile) -> list[tuple[int, int]]:
    """Pair current with previous clusters so the total center distance is least.

    Cluster ids are arbitrary per fit; only a matching says which cluster "moved" where. With
    different k, the surplus clusters stay unpaired.
    """
    a, b = current.in_std_units(current), current.in_std_units(previous)
    cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def center_shifts(current: ModelProfile, previous: ModelProfile) -> dict[int, tuple[int, float]]:
    """current cluster -> (its matched previous cluster, distance between their centers).

    Distances are in `current`'s std units (module docstring); unmatched clusters are left out.
    """
    here, there = current.in_std_units(current), current.in_std_units(previous)
    return {
        cluster: (old, float(np.linalg.norm(here[cluster] - there[old])))
        for cluster, old in match_clusters(current, previous)
    }


def comparison_table(
    current: ModelProfile, previous: ModelProfile | None, previous_model: str
) -> pd.DataFrame:
    """Long table: silhouette, k, and per matched cluster its size, centers and center shift.

    `previous_model` names the model compared against ("none: ..." on a first window, whose
    previous values are empty).
    """
    rows: list[tuple] = []

    def add(
        measure: str,
        cluster: int | None,
        previous_cluster: int | None,
        before: float | None,
        after: float | None,
        change: float | None = None,
    ) -> None:
        if change is None and before is not None and after is not None:
            change = after - before
        rows.append((measure, cluster, previous_cluster, before, after, change))

    add("silhouette", None, None, previous.silhouette if previous else None, current.silhouette)
    add("k", None, None, previous.k if previous else None, current.k)
    shifts = center_shifts(current, previous) if previous else {}
    for cluster, center in current.centers.iterrows():
        old_id, shift = shifts.get(int(cluster), (None, None))
        old = previous.centers.loc[old_id] if old_id is not None else None
        for column in ("size", *FEATURES):
            add(column, cluster, old_id, None if old is None else old[column], center[column])
        if old is not None:
            add("center_shift_std", cluster, old_id, None, None, shift)
    if previous is not None:
        continued = [old_id for old_id, _ in shifts.values()]
        for old_id, old in previous.centers.drop(index=continued).iterrows():
            for column in ("size", *FEATURES):
                add(column, None, old_id, old[column], None)
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS[:-1])
    table[["cluster", "previous_cluster"]] = table[["cluster", "previous_cluster"]].astype("Int64")
    table["previous_model"] = previous_model
    return table


def plot_comparison(
    table: pd.DataFrame, current: ModelProfile, previous: ModelProfile | None, path: Path
) -> None:
    """Sizes before/after per matched cluster, center shifts, silhouette before/after."""
    if previous is None:
        figure = Figure(figsize=(7, 2))
        axis = figure.subplots()
        axis.axis("off")
        axis.text(
            0.5,
            0.5,
            f"window {current.window}: no previous model to compare with",
            ha="center",
            va="center",
            fontsize=12,
        )
        figure.savefig(path, dpi=100)
        return

    sizes = table[table["measure"] == "size"]
    shifts = table[table["measure"] == "center_shift_std"]
    figure = Figure(figsize=(14, 3.8))
    axes = figure.subplots(1, 3, width_ratios=[3, 3, 1])
    x = np.arange(len(sizes))
    axes[0].bar(x - 0.2, sizes["previous"].fillna(0), 0.4, label=f"window {previous.window}")
    axes[0].bar(x + 0.2, sizes["current"].fillna(0), 0.4, label=f"window {current.window}")
    axes[0].set_xticks(x, _pair_labels(sizes))
    axes[0].set_title("cluster sizes (current<-previous)")
    axes[0].legend(loc="best", fontsize="small")
    axes[1].bar(np.arange(len(shifts)), shifts["change"], color="C2")
    axes[1].set_xticks(np.arange(len(shifts)), _pair_labels(shifts))
    axes[1].set_title("center shift (std units)")
    axes[2].bar(
        [f"w{previous.window}", f"w{current.window}"],
        [previous.silhouette, current.silhouette],
        color=["C0", "C1"],
    )
    axes[2].set_title("silhouette")
    figure.suptitle(f"window {previous.window} -> window {current.window}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _pair_labels(rows: pd.DataFrame) -> list[str]:
    """ "current<-previous" cluster ids of comparison rows, "-" where a side has no cluster."""

    def name(value) -> str:
        return "-" if value is None or pd.isna(value) else str(int(value))

    pairs = zip(rows["cluster"], rows["previous_cluster"], strict=True)
    return [f"{name(c)}<-{name(p)}" for c, p in pairs]
