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
  float64; `signum` and `abs` are exact.
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
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import frexp
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.training import feature_transform

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


# --- sign(x) * java.lang.StrictMath.log1p(|x|) --------------------------------------------------
# StrictMath.log1p is fdlibm 5.3's s_log1p.c; below it is followed step for step in float64 for
# the arguments the recipe gives it (|x| >= 0, or NaN). fdlibm branches on the high 32 bits of
# its argument; each such test is written as the equivalent test on the value (for x >= 0, "high
# word < W" is "x < the double with high word W and low word 0"), and the exponent and mantissa
# bits come from math.frexp / np.frexp, exact for every normal number.


def _from_high_word(word: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", word << 32))[0]


_LN2_HI = 6.93147180369123816490e-01  # 3fe62e42 fee00000
_LN2_LO = 1.90821492927058770002e-10  # 3dea39ef 35793c76
_LP1 = 6.666666666666735130e-01
_LP2 = 3.999999999940941908e-01
_LP3 = 2.857142874366239149e-01
_LP4 = 2.222219843214978396e-01
_LP5 = 1.818357216161805012e-01
_LP6 = 1.531383769920937332e-01
_LP7 = 1.479819860511658591e-01
_K0_ABOVE = _from_high_word(0x3FDA827A)  # hx < 0x3fda827a (x < 0.41422): no reduction, k = 0
_TWO_M20 = 2.0**-20
_TWO_M29 = 2.0**-29  # ax < 0x3e200000
_TWO_M54 = 2.0**-54  # ax < 0x3c900000
_TWO_53 = 2.0**53  # hx < 0x43400000: u = 1 + x with a correction term; above, u = x
_SQRT2_TOP = 0x6A09E / 2.0**20  # hu < 0x6a09e: u's mantissa below sqrt(2), normalise to [1, 2)
_HU_ZERO_HALF = 0xFFFFD / 2.0**20  # (0x00100000 - hu) >> 2 == 0 when normalising to [0.5, 1)
# Totals are mostly whole numbers, so the small ones are looked up rather than computed (filled
# below by the vectorised port, which the parity test checks against Spark like the rest).
_TABLE_LIMIT = 32_768


def signed_log1p(x: float) -> float:
    """Spark's `signum(x) * log1p(abs(x))` for one value: the hot path of `predict_one`.

    signum and abs are exact, so this is sign * StrictMath.log1p(|x|). The common case
    (0.41422 <= |x| < 2**53, not a power-of-two neighbour) runs inline."""
    y = _SIGNED_LOG1P_OF_INTEGERS.get(x)
    if y is not None:
        return y
    if x == 0.0:
        return x  # sign(+-0.0) * 0.0 is +-0.0
    sign = 1.0
    if x < 0.0:
        sign, x = -1.0, -x
    if not _K0_ABOVE <= x < _TWO_53:
        return sign * _log1p_rare(x)
    u = 1.0 + x
    m, e = frexp(u)  # u = m * 2**e with 0.5 <= m < 1: fdlibm's k is e - 1
    c = (1.0 - (u - x) if e > 1 else x - (u - 1.0)) / u  # the rounding error of 1 + x, over u
    t = m + m - 1.0  # u's mantissa bits as a fraction
    if t < _SQRT2_TOP:
        k, f, hu_zero = e - 1, t, t < _TWO_M20
    else:
        k, f, hu_zero = e, m - 1.0, t >= _HU_ZERO_HALF
    if hu_zero:
        return sign * _log1p_near_power_of_two(k, f, c)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    R = z * (_LP1 + z * (_LP2 + z * (_LP3 + z * (_LP4 + z * (_LP5 + z * (_LP6 + z * _LP7))))))
    # fdlibm returns f - (hfsq - s * (hfsq + R)) when k == 0: k >= 1 whenever x >= 0.41422.
    return sign * (k * _LN2_HI - ((hfsq - (s * (hfsq + R) + (k * _LN2_LO + c))) - f))


def _log1p_near_power_of_two(k: int, f: float, c: float) -> float:
    """fdlibm's `hu == 0` branch: u within 2**-20 of a power of two (k >= 1 here)."""
    if f == 0.0:
        c += k * _LN2_LO
        return k * _LN2_HI + c
    R = 0.5 * f * f * (1.0 - 0.66666666666666666 * f)
    return k * _LN2_HI - ((R - (k * _LN2_LO + c)) - f)


def _log1p_rare(x: float) -> float:
    """StrictMath.log1p(x) for x >= 0 outside [0.41422, 2**53): tiny, small, huge, inf, NaN."""
    if x < _K0_ABOVE:
        if x < _TWO_M29:
            return x if x < _TWO_M54 else x - x * x * 0.5
        hfsq = 0.5 * x * x  # k = 0: f = x, no reduction
        s = x / (2.0 + x)
        z = s * s
        R = z * (_LP1 + z * (_LP2 + z * (_LP3 + z * (_LP4 + z * (_LP5 + z * (_LP6 + z * _LP7))))))
        return x - (hfsq - s * (hfsq + R))
    if not x < math.inf:  # inf, NaN
        return x + x
    m, e = math.frexp(x)  # x >= 2**53: u = x, c = 0
    t = m + m - 1.0
    if t < _SQRT2_TOP:
        k, f, hu_zero = e - 1, t, t < _TWO_M20
    else:
        k, f, hu_zero = e, m - 1.0, t >= _HU_ZERO_HALF
    if hu_zero:
        return _log1p_near_power_of_two(k, f, 0.0)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    R = z * (_LP1 + z * (_LP2 + z * (_LP3 + z * (_LP4 + z * (_LP5 + z * (_LP6 + z * _LP7))))))
    return k * _LN2_HI - ((hfsq - (s * (hfsq + R) + (k * _LN2_LO + 0.0))) - f)


def _poly(z: np.ndarray) -> np.ndarray:
    return z * (_LP1 + z * (_LP2 + z * (_LP3 + z * (_LP4 + z * (_LP5 + z * (_LP6 + z * _LP7))))))


def _log1p_array(x: np.ndarray) -> np.ndarray:
    """StrictMath.log1p of every element (all >= 0, or NaN), fdlibm's branches each computed on
    the elements that take it."""
    out = np.empty_like(x)
    with np.errstate(all="ignore"):
        reduced = (x >= _K0_ABOVE) & (x < _TWO_53)
        if reduced.any():
            xs = x[reduced]
            u = 1.0 + xs
            m, e = np.frexp(u)
            c = np.where(e > 1, 1.0 - (u - xs), xs - (u - 1.0)) / u
            out[reduced] = _log1p_reduced(m, e, c)
        small = x < _K0_ABOVE
        if small.any():
            xs = x[small]
            hfsq = 0.5 * xs * xs
            s = xs / (2.0 + xs)
            k0 = xs - (hfsq - s * (hfsq + _poly(s * s)))
            tiny = np.where(xs < _TWO_M54, xs, xs - xs * xs * 0.5)
            out[small] = np.where(xs < _TWO_M29, tiny, k0)
        large = ~(reduced | small)  # >= 2**53, inf, NaN
        if large.any():
            xs = x[large]
            m, e = np.frexp(xs)
            finite = _log1p_reduced(m, e, np.zeros_like(xs))
            out[large] = np.where(np.isnan(xs) | (xs == np.inf), xs + xs, finite)
    return out


def _log1p_reduced(m: np.ndarray, e: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fdlibm's log1p from u = m * 2**e (0.5 <= m < 1) and the correction term c."""
    t = m + m - 1.0
    low = t < _SQRT2_TOP
    k = np.where(low, e - 1, e).astype(np.float64)
    f = np.where(low, t, m - 1.0)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    out = k * _LN2_HI - ((hfsq - (s * (hfsq + _poly(s * s)) + (k * _LN2_LO + c))) - f)
    hu_zero = np.where(low, t < _TWO_M20, t >= _HU_ZERO_HALF)
    if hu_zero.any():  # u within 2**-20 of a power of two
        k, f, c, hfsq = k[hu_zero], f[hu_zero], c[hu_zero], hfsq[hu_zero]
        near = k * _LN2_HI - ((hfsq * (1.0 - 0.66666666666666666 * f) - (k * _LN2_LO + c)) - f)
        out[hu_zero] = np.where(f == 0.0, k * _LN2_HI + (c + k * _LN2_LO), near)
    return out


def signed_log1p_array(x: np.ndarray) -> np.ndarray:
    """`signed_log1p` of every element of a float64 array; whole numbers from the table."""
    negative = x < 0.0
    magnitude = np.where(negative, -x, x)  # -0.0 stays -0.0, as log1p(-0.0) is -0.0
    with np.errstate(invalid="ignore"):
        whole = (magnitude >= 1.0) & (magnitude < _TABLE_LIMIT)
        whole &= magnitude == np.floor(magnitude)
    out = np.empty_like(magnitude)
    out[whole] = _LOG1P_OF_WHOLE_NUMBERS[magnitude[whole].astype(np.int64)]
    rest = ~whole
    out[rest] = _log1p_array(magnitude[rest])
    return np.where(negative, -out, out)


def _signed_log1p_table(values: np.ndarray) -> dict[float, float]:
    """signed_log1p of the whole numbers 0 < |n| < limit, keyed by value (0 is left out: -0.0
    would find it and lose its sign)."""
    whole = np.arange(1.0, len(values))
    keys = [*whole.tolist(), *(-whole).tolist()]
    return dict(zip(keys, [*values[1:].tolist(), *(-values[1:]).tolist()], strict=True))


# log1p(n) for n = 0 .. _TABLE_LIMIT - 1, by the vectorised port.
_LOG1P_OF_WHOLE_NUMBERS = _log1p_array(np.arange(float(_TABLE_LIMIT)))
_SIGNED_LOG1P_OF_INTEGERS = _signed_log1p_table(_LOG1P_OF_WHOLE_NUMBERS)


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
