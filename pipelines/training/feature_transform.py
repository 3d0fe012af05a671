"""The tail-robust transform of the customer totals: one definition for training and serving.

Customer totals are heavy-tailed (on the UCI file: skewness ~20, median TotalQuantity 379 against
a maximum of 196,915), and standard scaling alone leaves a handful of huge customers so far out
that KMeans spends a cluster on them. The recipe therefore maps every total x to

    sign(x) * log1p(|x|)

before scaling: the identity near 0, log1p for the ordinary positive totals, and an odd (mirror
image) function, so negative totals (returns outweighing purchases) and zeros stay defined and
keep their order.

Why signed log1p and not asinh, which has the same shape: Spark has no accurate asinh. Its
`asinh` is `log(x + sqrt(x*x + 1))`, which cancels catastrophically for negative x (it is
-Infinity from about -1e8 on) and overflows x*x to Infinity beyond ~1.3e154; `log1p` is
`java.lang.StrictMath.log1p` (fdlibm), accurate to 1 ulp everywhere and reproducible bit for bit
outside the JVM. For the positive totals that make up nearly all of the data it is exactly the
log1p the issue measured.

In the model the transform is a built-in `SQLTransformer` whose statement is `statement(...)`,
so a saved `PipelineModel` loads without any Python class. This module is deliberately free of
pyspark: the JVM-free server (serving/predictor.py) imports it to recognise the stage by comparing
the saved statement with the one built here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIGNED_LOG1P = "signed-log1p"
NONE = "none"
TRANSFORMS: tuple[str, ...] = (SIGNED_LOG1P, NONE)
DEFAULT_TRANSFORM = SIGNED_LOG1P

# The transformed copy of column c is named OUTPUT_PREFIX + c; the raw columns are kept as well.
OUTPUT_PREFIX = "slog1p_"


def output_column(column: str) -> str:
    return f"{OUTPUT_PREFIX}{column}"


def input_column(output: str) -> str | None:
    """The raw column a transformed column comes from, or None if it is not one."""
    if output.startswith(OUTPUT_PREFIX) and len(output) > len(OUTPUT_PREFIX):
        return output[len(OUTPUT_PREFIX) :]
    return None


def statement(columns: Sequence[str]) -> str:
    """The SQLTransformer statement that adds sign(c) * log1p(|c|) for every column c.

    Each column is cast to DOUBLE first: `abs` of a LONG would be LONG arithmetic (and overflow on
    the most negative long). Everything of the input is kept (`*`), so ids pass through.
    """
    terms = []
    for column in columns:
        value = f"CAST(`{column}` AS DOUBLE)"
        terms.append(f"signum({value}) * log1p(abs({value})) AS `{output_column(column)}`")
    return f"SELECT *, {', '.join(terms)} FROM __THIS__"


def inverse(values: np.ndarray) -> np.ndarray:
    """sign(y) * expm1(|y|): transformed values back in original units (for reports, not exact)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.sign(values) * np.expm1(np.abs(values))
