"""Drift between consecutive windows, on hand-made data: no Spark.

PSI on known distributions, centers matched back through a permutation, ARI of relabelled
clusters, the segment map and its JSON, and the chart. That the training logs them is checked in
test_train.py on its shared training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.contract import FEATURES
from pipelines.training.drift import (
    CLUSTER,
    PREVIOUS_CLUSTER,
    HistoryPoint,
    Snapshot,
    feature_psi,
    measure,
    plot_history,
    population_stability_index,
)
from pipelines.training.report import ModelProfile

RNG = np.random.default_rng(11)


def test_psi_of_one_distribution_is_about_zero() -> None:
    reference = RNG.lognormal(3, 1, 5_000)
    assert population_stability_index(reference, reference) == pytest.approx(0, abs=1e-12)
    assert population_stability_index(reference, RNG.lognormal(3, 1, 5_000)) < 0.02


def test_psi_of_a_shifted_distribution_is_large() -> None:
    reference = RNG.normal(0, 1, 5_000)
    assert population_stability_index(reference, RNG.normal(1, 1, 5_000)) > 0.25


def test_psi_with_empty_bins_is_finite() -> None:
    """Every new value beyond the reference's largest: nine empty bins on the new side."""
    reference, current = RNG.uniform(0, 1, 1_000), RNG.uniform(5, 6, 1_000)
    value = population_stability_index(reference, current)
    assert np.isfinite(value) and value > 1


def test_psi_of_tied_counts_merges_their_bins() -> None:
    """NumInvoices-like data: mostly 1 and 2, so several deciles are one edge."""
    reference = RNG.choice([1, 1, 1, 1, 2, 2, 3, 5, 8], 2_000)
    assert population_stability_index(reference, reference) == pytest.approx(0, abs=1e-12)
    assert population_stability_index(reference, reference + 1) > 0.25


def test_feature_psi_covers_the_contract_features() -> None:
    customers = pd.DataFrame({name: RNG.lognormal(2, 1, 500) for name in FEATURES})
    assert feature_psi(customers, customers) == pytest.approx(dict.fromkeys(FEATURES, 0.0))


def _profile(window: int, model_centers: np.ndarray) -> ModelProfile:
    centers = pd.DataFrame(model_centers, columns=list(FEATURES))
    centers["size"] = 10
    std = np.ones(len(FEATURES))
    return ModelProfile(window, len(model_centers), 0.5, centers, model_centers, std)


def _customers(clusters: np.ndarray, previous: np.ndarray | None = None) -> pd.DataFrame:
    table = pd.DataFrame({name: RNG.lognormal(2, 1, len(clusters)) for name in FEATURES})
    table[CLUSTER] = clusters
    if previous is not None:
        table[PREVIOUS_CLUSTER] = previous
    return table


CENTERS = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
NAMES = ("occasional", "loyal", "wholesale")


def test_relabelled_clusters_map_back_with_their_shift_and_ari_one() -> None:
    """The new model is the old one with ids permuted (new i = old PERM[i]), centers moved a bit."""
    perm = np.array([2, 0, 1])
    moved = CENTERS[perm] + np.array([[0.3, 0, 0], [0, 0.4, 0], [0, 0, 0.5]])
    old_labels = RNG.integers(0, 3, 300)
    new_labels = np.argsort(perm)[old_labels]  # the same customers, new ids
    previous = Snapshot(_profile(1, CENTERS), _customers(old_labels), NAMES)
    current = Snapshot(
        _profile(2, moved), _customers(new_labels, old_labels), tuple(NAMES[p] for p in perm)
    )

    drift = measure(current, previous)

    assert drift.ari == pytest.approx(1.0)
    segments = drift.segments.set_index("cluster")
    assert segments["continues"].tolist() == perm.tolist()
    assert segments["most_members_from"].tolist() == perm.tolist()
    assert segments["members_from_continued"].tolist() == [1.0, 1.0, 1.0]
    assert (segments["name"] == segments["continues_name"]).all()
    assert segments["center_shift_std"].tolist() == pytest.approx([0.3, 0.4, 0.5])
    metrics = drift.metrics()
    assert metrics["center_shift_max"] == pytest.approx(0.5)
    assert metrics["center_shift_mean"] == pytest.approx(0.4)
    assert set(metrics) == {
        *(f"psi_{name}" for name in FEATURES),
        "center_shift_max",
        "center_shift_mean",
        "ari_previous_model",
    }
    assert drift.not_continued == ()


def test_unrelated_assignments_have_ari_near_zero() -> None:
    old_labels, new_labels = RNG.integers(0, 3, 3_000), RNG.integers(0, 3, 3_000)
    previous = Snapshot(_profile(1, CENTERS), _customers(old_labels), NAMES)
    current = Snapshot(_profile(2, CENTERS), _customers(new_labels, old_labels), NAMES)
    assert abs(measure(current, previous).ari) < 0.02


def test_segment_map_json_names_new_and_ended_segments() -> None:
    """k 3 -> 2: the far cluster 2 ends; then k 2 -> 3: the new cluster continues nothing."""
    three = Snapshot(_profile(1, CENTERS), _customers(RNG.integers(0, 3, 100)), NAMES)
    two_labels = RNG.integers(0, 2, 100)
    two = Snapshot(_profile(2, CENTERS[:2]), _customers(two_labels, two_labels), NAMES[:2])
    shrunk = json.loads(measure(two, three).segment_map_json())
    assert (shrunk["window"], shrunk["previous_window"]) == (2, 1)
    assert shrunk["not_continued"] == [2]
    assert [s["continues"] for s in shrunk["segments"]] == [0, 1]

    three_labels = RNG.integers(0, 3, 100)
    grown = Snapshot(
        _profile(3, CENTERS[[1, 0, 2]]), _customers(three_labels, three_labels % 2), NAMES
    )
    document = json.loads(measure(grown, two).segment_map_json())
    unmatched = [s for s in document["segments"] if s["continues"] is None]
    assert [s["cluster"] for s in unmatched] == [2]
    assert unmatched[0]["center_shift_std"] is None
    assert unmatched[0]["continues_name"] is None


def test_drift_chart_draws_a_first_window_without_drift(tmp_path: Path) -> None:
    previous = Snapshot(_profile(1, CENTERS), _customers(RNG.integers(0, 3, 100)), NAMES)
    labels = RNG.integers(0, 3, 100)
    current = Snapshot(_profile(2, CENTERS + 0.1), _customers(labels, labels), NAMES)
    history = [
        HistoryPoint(1, 0.6, {}),
        HistoryPoint(2, 0.55, measure(current, previous).metrics()),
    ]
    plot_history(history, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"
