"""Predict with a saved Spark `PipelineModel` without Spark: read its stages, mirror its arithmetic.

A Spark model answers one row in ~100 ms because every request is a Spark job. The stages of
`pipelines.training.recipe` hold a handful of numbers (scaler mean and std, cluster centers) and
one fixed SQL statement, so this module reads them from the saved metadata (JSON) and data
(Parquet) and predicts with numpy (batches) or plain floats (one row).

The arithmetic is Spark 4's, operation for operation, so predictions are identical, ties and
overflow included (tests/serving/test_parity.py checks it against Spark itself):

- `SQLTransformer` with exactly the statement of `pipelines.training.feature_transform.statement`
  (any other statement is refused): `signum(x) * log1p(abs(x))` per feature. Spark evaluates
  `log1p` with `java.lang.StrictMath.log1p`, i.e. fdlibm's `s_log1p.c`; glibc's `log1p` (Python's
  `math.log1p`) and numpy's differ from it in the last bit for about 1 input in 10,000 (68 of a
  million customer-like values), enough to move a point across a boundary between clusters. So
  fdlibm's algorithm is reproduced here (`signed_log1p`, `signed_log1p_array`), step for step in
  float64 (serving/strict_log1p.py); `signum` and `abs` are exact.
- `StandardScalerModel`: `(x - mean) * scale` with `scale = 1 / std`, or 0 where std is 0.
- `KMeansModel` (mllib `EuclideanDistanceMeasure.findClosest` with the "statistics" bounds of
  `DistanceMeasure.computeStatistics`): distances are summed left to right as `Vectors.sqdist`
  does for dense vectors, norms as `Vectors.norm`; centers are skipped by the same norm and
  triangle-inequality bounds, and the search stops early where Spark's does.

Anything this reader cannot mirror exactly fails at load with an error naming the stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.training import feature_transform
from serving.strict_log1p import signed_log1p, signed_log1p_array

_SQL = "org.apache.spark.ml.feature.SQLTransformer"
_ASSEMBLER = "org.apache.spark.ml.feature.VectorAssembler"
_SCALER = "org.apache.spark.ml.feature.StandardScalerModel"
_KMEANS = "org.apache.spark.ml.clustering.KMeansModel"
_PIPELINE = "org.apache.spark.ml.PipelineModel"


class UnsupportedModelError(ValueError):
    """The saved model has a stage or setting this reader does not mirror exactly."""


def _read_metadata(path: Path) -> dict[str, Any]:
    parts = sorted((path / "metadata").glob("part-*"))
    if not parts:
        raise UnsupportedModelError(f"{path}: no metadata/part-* file")
    return json.loads(parts[0].read_text().splitlines()[0])


def _param(metadata: dict[str, Any], name: str) -> Any:
    """A stage parameter as Spark resolves it: the explicit value, else the default."""
    if name in metadata.get("paramMap", {}):
        return metadata["paramMap"][name]
    return metadata.get("defaultParamMap", {}).get(name)


def _vector(value: dict[str, Any]) -> np.ndarray:
    """A Spark ML vector struct (type 0 sparse, 1 dense) as a dense float64 array."""
    if value["type"] == 1:
        return np.array(value["values"], dtype=np.float64)
    dense = np.zeros(value["size"], dtype=np.float64)
    dense[np.array(value["indices"], dtype=np.int64)] = value["values"]
    return dense


def _sqdist(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Spark's dense `Vectors.sqdist`: sum of squared differences, left to right."""
    total = np.zeros(points.shape[0])
    for j in range(points.shape[1]):
        diff = points[:, j] - center[j]
        total += diff * diff
    return total


def _norm(points: np.ndarray) -> np.ndarray:
    """Spark's `Vectors.norm(v, 2)`: sqrt of the sum of squares, left to right."""
    total = np.zeros(points.shape[0])
    for j in range(points.shape[1]):
        total += points[:, j] * points[:, j]
    return np.sqrt(total)


@dataclass(frozen=True)
class Scaler:
    """A `StandardScalerModel` with `withMean=true`; its output is always a dense vector."""

    mean: np.ndarray
    scale: np.ndarray
    _pairs: list[tuple[float, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pairs = list(zip(self.mean.tolist(), self.scale.tolist(), strict=True))
        object.__setattr__(self, "_pairs", pairs)

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any]) -> Scaler:
        uid = metadata["uid"]
        if not _param(metadata, "withMean"):
            # Without centering Spark keeps sparse inputs sparse, and KMeans then takes its
            # inner-product branch: arithmetic this reader does not mirror.
            raise UnsupportedModelError(
                f"stage {uid} (StandardScalerModel): withMean=false is not supported"
            )
        row = pq.read_table(path / "data").to_pylist()[0]
        mean, std = _vector(row["mean"]), _vector(row["std"])
        if _param(metadata, "withStd"):
            with np.errstate(divide="ignore"):
                scale = np.where(std == 0.0, 0.0, 1.0 / std)
        else:
            scale = np.ones_like(std)
        return cls(mean=mean, scale=scale)

    def transform(self, points: np.ndarray) -> np.ndarray:
        return (points - self.mean) * self.scale

    def transform_one(self, point: Sequence[float]) -> list[float]:
        return [(x - m) * s for x, (m, s) in zip(point, self._pairs, strict=True)]

    def to_original(self, scaled: np.ndarray) -> np.ndarray:
        """Map points of the scaled space back to input units (where std is 0: the mean)."""
        unscaled = np.divide(scaled, self.scale, out=np.zeros_like(scaled), where=self.scale != 0)
        return self.mean + unscaled


@dataclass(frozen=True)
class NearestCenter:
    """A euclidean `KMeansModel`: centers, their norms, and Spark's pairwise bounds."""

    centers: np.ndarray
    norms: np.ndarray
    # bounds[i, j] = (|c_i - c_j| / 2)^2 for i != j; bounds[i, i] = min over j != i.
    bounds: np.ndarray
    _lists: tuple[list[list[float]], list[float], list[list[float]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lists = (self.centers.tolist(), self.norms.tolist(), self.bounds.tolist())
        object.__setattr__(self, "_lists", lists)

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any]) -> NearestCenter:
        uid = metadata["uid"]
        measure = _param(metadata, "distanceMeasure")
        if measure != "euclidean":
            raise UnsupportedModelError(
                f"stage {uid} (KMeansModel): distanceMeasure {measure!r} is not supported"
            )
        rows = sorted(pq.read_table(path / "data").to_pylist(), key=lambda r: r["clusterIdx"])
        centers = np.array([_vector(r["clusterCenter"]) for r in rows])
        k, dims = centers.shape
        # mllib KMeansModel computes the bounds only below these sizes, else searches unbounded.
        if not (k < 1000 and k * k * dims < 1_000_000):
            raise UnsupportedModelError(
                f"stage {uid} (KMeansModel): k={k} with {dims} features is too large"
            )
        bounds = np.full((k, k), np.inf)
        for i in range(k):
            for j in range(i + 1, k):
                distance = math.sqrt(float(_sqdist(centers[i : i + 1], centers[j])[0]))
                bounds[i, j] = bounds[j, i] = 0.25 * distance * distance
        if k == 1:
            bounds[0, 0] = math.nan
        else:
            for i in range(k):
                bounds[i, i] = min(bounds[i, j] for j in range(k) if j != i)
        return cls(centers=centers, norms=_norm(centers), bounds=bounds)

    def predict(self, points: np.ndarray) -> np.ndarray:
        """`findClosest` for every row at once: the per-row loop, run center by center."""
        centers, bounds = self.centers, self.bounds
        best = _sqdist(points, centers[0])
        index = np.zeros(points.shape[0], dtype=np.int64)
        done = best < bounds[0, 0]
        point_norms = _norm(points)
        for i in range(1, len(centers)):
            norm_diff = self.norms[i] - point_norms
            searching = ~done & (norm_diff * norm_diff < best) & (bounds[i, index] < best)
            if not searching.any():
                continue
            distance = _sqdist(points, centers[i])
            certain = searching & (distance < bounds[i, i])
            closer = searching & (distance < best)
            index[certain | closer] = i
            best = np.where(closer, distance, best)
            done |= certain
        return index

    def predict_one(self, point: list[float]) -> int:
        """The same search for one row in plain floats: a few microseconds, no array overhead."""
        centers, norms, bounds = self._lists
        best = sum_sq = 0.0
        for x, c in zip(point, centers[0], strict=True):
            best += (x - c) * (x - c)
        if best < bounds[0][0]:
            return 0
        for x in point:
            sum_sq += x * x
        point_norm = math.sqrt(sum_sq)
        index = 0
        for i in range(1, len(centers)):
            norm_diff = norms[i] - point_norm
            if norm_diff * norm_diff < best and bounds[i][index] < best:
                distance = 0.0
                for x, c in zip(point, centers[i], strict=True):
                    distance += (x - c) * (x - c)
                if distance < bounds[i][i]:
                    return i
                if distance < best:
                    best, index = distance, i
        return index


@dataclass(frozen=True)
class SegmentationModel:
    """[SQLTransformer (signed log1p) ->] VectorAssembler -> StandardScalerModel(withMean) ->
    KMeansModel, as numbers."""

    input_cols: tuple[str, ...]  # the raw features, read from a request in this order
    scaler: Scaler
    kmeans: NearestCenter
    transform: str = feature_transform.NONE  # or feature_transform.SIGNED_LOG1P

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Clusters for an (n, len(input_cols)) float64 array of raw feature rows."""
        with np.errstate(over="ignore", invalid="ignore"):
            if self.transform == feature_transform.SIGNED_LOG1P:
                rows = signed_log1p_array(rows)
            return self.kmeans.predict(self.scaler.transform(rows))

    def predict_one(self, row: Sequence[float]) -> int:
        """The cluster of one raw feature row, in the order of `input_cols`."""
        if self.transform == feature_transform.SIGNED_LOG1P:
            row = [signed_log1p(x) for x in row]
        return self.kmeans.predict_one(self.scaler.transform_one(row))

    def to_original(self, scaled: np.ndarray) -> np.ndarray:
        """Points of the scaled space (e.g. the centers) in input units, for people to read."""
        unscaled = self.scaler.to_original(scaled)
        if self.transform == feature_transform.SIGNED_LOG1P:
            return feature_transform.inverse(unscaled)
        return unscaled

    @property
    def k(self) -> int:
        return len(self.kmeans.centers)


_NAMES = {
    _SQL: "SQLTransformer",
    _ASSEMBLER: "VectorAssembler",
    _SCALER: "StandardScalerModel",
    _KMEANS: "KMeansModel",
}


def load_pipeline(path: str | Path) -> SegmentationModel:
    """Read a saved Spark PipelineModel directory (an MLflow model's `sparkml/` folder)."""
    root = Path(path)
    metadata = _read_metadata(root)
    if metadata.get("class") != _PIPELINE:
        raise UnsupportedModelError(f"{root}: {metadata.get('class')} is not a PipelineModel")
    stages = []
    for position, uid in enumerate(_param(metadata, "stageUids")):
        stage_path = root / "stages" / f"{position}_{uid}"
        stages.append((stage_path, _read_metadata(stage_path)))

    for _, meta in stages:
        if meta["class"] not in _NAMES:
            raise UnsupportedModelError(
                f"stage {meta['uid']} ({meta['class']}) is not supported; "
                f"supported: {', '.join(_NAMES.values())}"
            )
    sql = stages.pop(0)[1] if stages and stages[0][1]["class"] == _SQL else None
    if [meta["class"] for _, meta in stages] != [_ASSEMBLER, _SCALER, _KMEANS]:
        names = ", ".join(meta["uid"] for _, meta in ([(None, sql)] if sql else []) + stages)
        raise UnsupportedModelError(
            f"stages [{names}]: expected [SQLTransformer ->] VectorAssembler -> "
            "StandardScalerModel -> KMeansModel"
        )
    (_, assembler), (scaler_path, scaler_meta), (kmeans_path, kmeans_meta) = stages
    _check_wired(assembler, "outputCol", scaler_meta, "inputCol")
    _check_wired(scaler_meta, "outputCol", kmeans_meta, "featuresCol")
    input_cols = tuple(_param(assembler, "inputCols"))
    transform = feature_transform.NONE
    if sql is not None:
        input_cols = _signed_log1p_inputs(sql, input_cols)
        transform = feature_transform.SIGNED_LOG1P
    model = SegmentationModel(
        input_cols=input_cols,
        scaler=Scaler.load(scaler_path, scaler_meta),
        kmeans=NearestCenter.load(kmeans_path, kmeans_meta),
        transform=transform,
    )
    sizes = {len(model.input_cols), len(model.scaler.mean), model.kmeans.centers.shape[1]}
    if len(sizes) != 1:
        raise UnsupportedModelError(f"{root}: stages disagree on the number of features")
    return model


def _signed_log1p_inputs(sql: dict[str, Any], assembled: tuple[str, ...]) -> tuple[str, ...]:
    """The raw columns, when the SQLTransformer is exactly the recipe's signed log1p of the
    columns the assembler reads; anything else would be arithmetic this reader does not do."""
    raw = [feature_transform.input_column(column) for column in assembled]
    expected = None if None in raw else feature_transform.statement(raw)
    found = _param(sql, "statement")
    if expected is None or found != expected:
        raise UnsupportedModelError(
            f"stage {sql['uid']} (SQLTransformer): statement {found!r} is not supported; "
            "supported: the recipe's signed log1p of every column the VectorAssembler reads "
            f"({expected or 'its inputs must all be ' + feature_transform.OUTPUT_PREFIX + '*'})"
        )
    return tuple(raw)


def _check_wired(upstream: dict, output: str, downstream: dict, input_: str) -> None:
    if _param(upstream, output) != _param(downstream, input_):
        raise UnsupportedModelError(
            f"stage {downstream['uid']} reads column {_param(downstream, input_)!r}, "
            f"but stage {upstream['uid']} writes {_param(upstream, output)!r}"
        )
