"""sign(x) * java.lang.StrictMath.log1p(|x|), bit for bit, without a JVM.

The recipe's first stage is Spark SQL's `signum(x) * log1p(abs(x))`, and Spark evaluates `log1p`
with `java.lang.StrictMath.log1p`, i.e. fdlibm 5.3's `s_log1p.c`. glibc's `log1p` (Python's
`math.log1p`) and numpy's differ from it in the last bit for about 1 input in 10,000, enough to
move a customer across a boundary between clusters, so the server uses this port instead
(tests/serving/test_parity.py checks it against Spark on every branch). On its own because it is
a numeric port, read against fdlibm's source, not against the rest of the predictor.
"""

from __future__ import annotations

import math
import struct
from math import frexp

import numpy as np

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
