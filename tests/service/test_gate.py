"""The quality gate: each check alone rejects, with a reason naming it; the centre shift is
measured after pairing clusters; bad thresholds and crash points are refused by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.schema import FEATURES
from pipelines.service.faults import FAIL_AT, check_fail_at
from pipelines.service.gate import (
    DEFAULT_MAX_CENTER_SHIFT,
    DEFAULT_MIN_SILHOUETTE,
    Gate,
    center_shift,
    judge,
)
from pipelines.training.fitting import Spec
from pipelines.training.report import ModelProfile

GATE = Gate(k_range=(3, 8), min_cluster_share=0.02, min_silhouette=0.25, max_center_shift=1.0)


def test_a_model_meeting_every_check_is_accepted() -> None:
    verdict = judge(GATE, k=4, min_share=0.05, silhouette=0.6, center_shift=0.5)
    assert verdict.accepted
    assert verdict.tags == {"gate": "accepted", "gate_reason": verdict.reason}
    assert judge(GATE, k=4, min_share=0.05, silhouette=0.6, center_shift=None).accepted


@pytest.mark.parametrize(
    ("measures", "reason"),
    [
        ({"k": 2}, "k=2 outside 3..8"),
        ({"k": 9}, "k=9 outside 3..8"),
        ({"min_share": 0.01}, "smallest cluster 1.0% < 2.0%"),
        ({"silhouette": 0.2}, "silhouette 0.2000 < 0.25"),
        ({"center_shift": 1.5}, "centre shift 1.50 std > 1.0"),
    ],
)
def test_each_check_alone_rejects_and_says_why(measures: dict, reason: str) -> None:
    verdict = judge(
        GATE, **{"k": 4, "min_share": 0.05, "silhouette": 0.6, "center_shift": 0.5, **measures}
    )
    assert not verdict.accepted
    assert verdict.reason == reason
    assert verdict.tags["gate"] == "rejected"


def test_every_failed_check_is_named() -> None:
    verdict = judge(GATE, k=9, min_share=0.05, silhouette=0.1, center_shift=None)
    assert verdict.reason == "k=9 outside 3..8; silhouette 0.1000 < 0.25"


def test_the_gate_takes_the_recipes_k_range_and_cluster_share() -> None:
    assert Gate.of(Spec(k_range=(2, 5), min_cluster_share=0.1)) == Gate(
        (2, 5), 0.1, DEFAULT_MIN_SILHOUETTE, DEFAULT_MAX_CENTER_SHIFT
    )
    assert Gate.of(Spec(k=4)).k_range == (4, 4)


@pytest.mark.parametrize(
    ("options", "named"),
    [({"min_silhouette": 1.5}, "min_silhouette"), ({"max_center_shift": 0}, "max_center_shift")],
)
def test_bad_thresholds_are_refused_by_name(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Gate((3, 8), 0.02, **options)


def _profile(centers: list[list[float]], std: list[float], sizes: list[int]) -> ModelProfile:
    frame = pd.DataFrame(centers, columns=list(FEATURES)).assign(size=sizes)
    return ModelProfile(1, len(centers), 0.5, frame, np.array(centers, float), np.array(std, float))


def test_the_centre_shift_pairs_clusters_and_averages_over_the_customers() -> None:
    """The same centres in another order have not moved. One centre moved by 3 in a feature of
    std 2 (1.5 standard deviations) and holds 30 of the 50 customers: 0.9 on average."""
    previous = _profile([[0, 0, 0], [10, 0, 0], [0, 10, 0]], [2, 2, 2], [10, 10, 10])
    shuffled = _profile([[0, 10, 0], [0, 0, 0], [10, 0, 0]], [2, 2, 2], [10, 30, 10])
    moved = _profile([[0, 10, 0], [0, 0, 3], [10, 0, 0]], [2, 2, 2], [10, 30, 10])

    assert center_shift(shuffled, previous) == 0
    assert center_shift(moved, previous) == pytest.approx(0.9)


def test_a_new_cluster_is_not_a_shift() -> None:
    previous = _profile([[0, 0, 0], [10, 0, 0]], [1, 1, 1], [10, 10])
    split = _profile([[0, 0, 0], [10, 0, 0], [50, 50, 50]], [1, 1, 1], [10, 10, 5])
    assert center_shift(split, previous) == 0


@pytest.mark.parametrize("value", ["fit", "fitting:1", "logged:x"])
def test_a_misspelt_crash_point_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(FAIL_AT, value)
    with pytest.raises(ValueError, match=FAIL_AT):
        check_fail_at()


def test_a_sliding_span_below_one_window_is_refused() -> None:
    with pytest.raises(ValueError, match="span"):
        Spec(mode="sliding", span=0)
