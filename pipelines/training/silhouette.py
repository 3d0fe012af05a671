"""The silhouette of a clustering, as Spark's ClusteringEvaluator defines it, computed in numpy.

Why not ClusteringEvaluator itself: it runs two Spark jobs per candidate k, and on a few thousand
customers a Spark job is almost all scheduling overhead (~0.1-0.4 s of JVM CPU each, measured).
Every candidate's clusters come back from one job (pipelines/training/scoring.py) and are scored
here, in milliseconds.

The definition is Spark's (ml/evaluation/ClusteringMetrics.scala), term for term:

- Only non-empty clusters count; fewer than two is an error, as in Spark.
- `squaredEuclidean` (KMeans' euclidean): the mean *squared* distance of x to cluster C is
  |x|^2 + sum(|y|^2)/n_C - 2 x.sum(y)/n_C over y in C.
- `cosine`: features divided by their norm, the mean distance of x to C is 1 - x.sum(y)/n_C.
- a(x) is the mean distance to x's own cluster scaled by n/(n-1) (x itself left out), 0 for a
  singleton; b(x) the smallest mean distance to another cluster; s(x) = 1 - a/b if a < b,
  b/a - 1 if a > b, else 0. The score is the mean of s over all points.

The sums run in another order than Spark's, so the score can differ in the last bits (~1e-16).
"""

from __future__ import annotations

import numpy as np

# ClusteringEvaluator's distance for the silhouette of each KMeans distance measure.
SILHOUETTE_DISTANCE = {"euclidean": "squaredEuclidean", "cosine": "cosine"}


def silhouette(points: np.ndarray, labels: np.ndarray, distance: str) -> float:
    """Mean silhouette of `points` (n x d) in clusters `labels` (n), `distance` one of
    SILHOUETTE_DISTANCE's values."""
    if distance not in SILHOUETTE_DISTANCE.values():
        raise ValueError(f"distance must be one of {sorted(SILHOUETTE_DISTANCE.values())}")
    if points.ndim != 2 or len(points) != len(labels):
        raise ValueError(f"need n x d points and n labels, got {points.shape} and {len(labels)}")
    clusters, member_of = np.unique(labels, return_inverse=True)
    if len(clusters) < 2:
        raise ValueError(f"silhouette needs at least two non-empty clusters, got {len(clusters)}")
    if distance == "cosine":
        points = points / np.linalg.norm(points, axis=1, keepdims=True)
    sizes = np.bincount(member_of).astype(float)
    sums = np.zeros((len(clusters), points.shape[1]))
    np.add.at(sums, member_of, points)
    dot = points @ sums.T / sizes  # x . sum(y) / n_C, for every point and cluster
    if distance == "cosine":
        mean_distance = 1.0 - dot
    else:
        squared = np.einsum("ij,ij->i", points, points)
        mean_distance = squared[:, None] + np.bincount(member_of, squared) / sizes - 2.0 * dot
    rows = np.arange(len(points))
    own_size = sizes[member_of]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(own_size > 1, mean_distance[rows, member_of] * own_size / (own_size - 1), 0.0)
        mean_distance[rows, member_of] = np.inf
        b = mean_distance.min(axis=1)
        s = np.where(a < b, 1.0 - a / b, np.where(a > b, b / a - 1.0, 0.0))
    return float(s.mean())
