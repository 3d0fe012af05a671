"""The quality gate a new version passes before the aliases move to it.

The recipe's own checks (the chosen k within the k range, every cluster at least the minimum
share of the customers), a silhouette floor, and a drift check against the current `model3`: how far
the new model's customers' centres moved, in standard deviations of the new model's scaler, after
pairing old and new clusters so the total distance is least (pipelines/training/report.py). A
rejected version stays registered, tagged with the verdict; the aliases stay where they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.training.fitting import Spec
from pipelines.training.report import ModelProfile, center_shifts

# Kaufman and Rousseeuw's reading of the average silhouette: below 0.25 no substantial structure
# has been found, so such a segmentation is not served.
DEFAULT_MIN_SILHOUETTE = 0.25
# The centre shift is averaged over the customers (each paired cluster weighted by its size): a
# handful of extreme customers moves their small cluster's centre by several standard deviations
# between two windows of the same stream (3.3 seen on generated data), without changing the answer
# for anyone else. A typical customer whose centre moved more than one standard deviation of the
# features (where KMeans measures) is in a segment that means something else.
DEFAULT_MAX_CENTER_SHIFT = 1.0

VERDICT_TAG = "gate"  # on the run and the version: ACCEPTED or REJECTED
REASON_TAG = "gate_reason"  # why, in one line
ACCEPTED = "accepted"
REJECTED = "rejected"


@dataclass(frozen=True)
class Gate:
    """The thresholds a version must meet."""

    k_range: tuple[int, int]
    min_cluster_share: float
    min_silhouette: float = DEFAULT_MIN_SILHOUETTE
    max_center_shift: float = DEFAULT_MAX_CENTER_SHIFT

    def __post_init__(self) -> None:
        if not -1 <= self.min_silhouette <= 1:
            raise ValueError(f"min_silhouette must be in [-1, 1], got {self.min_silhouette}")
        if self.max_center_shift <= 0:
            raise ValueError(f"max_center_shift must be > 0, got {self.max_center_shift}")

    @classmethod
    def of(
        cls,
        spec: Spec,
        min_silhouette: float = DEFAULT_MIN_SILHOUETTE,
        max_center_shift: float = DEFAULT_MAX_CENTER_SHIFT,
    ) -> Gate:
        """The recipe's k range (a fixed k is a range of one) and cluster share, and the floors."""
        k_range = (spec.k, spec.k) if spec.k else spec.k_range
        return cls(k_range, spec.min_cluster_share, min_silhouette, max_center_shift)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str

    @property
    def tags(self) -> dict[str, str]:
        return {VERDICT_TAG: ACCEPTED if self.accepted else REJECTED, REASON_TAG: self.reason}


def judge(
    gate: Gate, k: int, min_share: float, silhouette: float, center_shift: float | None
) -> Verdict:
    """The verdict on a model with these measures; `center_shift` None: no model3 to compare."""
    low, high = gate.k_range
    failed = []
    if not low <= k <= high:
        failed.append(f"k={k} outside {low}..{high}")
    if min_share < gate.min_cluster_share:
        failed.append(f"smallest cluster {min_share:.1%} < {gate.min_cluster_share:.1%}")
    if silhouette < gate.min_silhouette:
        failed.append(f"silhouette {silhouette:.4f} < {gate.min_silhouette}")
    if center_shift is not None and center_shift > gate.max_center_shift:
        failed.append(f"centre shift {center_shift:.2f} std > {gate.max_center_shift}")
    if failed:
        return Verdict(False, "; ".join(failed))
    shift = "no model3 yet" if center_shift is None else f"centre shift {center_shift:.2f} std"
    return Verdict(True, f"k={k}, silhouette {silhouette:.4f}, {shift}")


def center_shift(current: ModelProfile, previous: ModelProfile) -> float:
    """How far the current model's customers' centres moved from their paired previous centres,
    on average, in the current model's standard deviations. Customers of a cluster with no partner
    (k grew) do not count."""
    shifts = center_shifts(current, previous)
    sizes = current.centers["size"].to_numpy(float)[list(shifts)]
    return float(np.average([shift for _, shift in shifts.values()], weights=sizes))
