"""The project's one departure from libm: a sine (and cosine) that Numba can vectorise.

Numba compiles ``math.sin`` to a libm call, which LLVM cannot vectorise (the SVML-patched LLVM that would
is not in the llvmlite wheels); the CTF needs one sine per Fourier sample, and a shift's phase ramp a sine
and a cosine per row and per column (``sincos_vectorisable``). ``sin_vectorisable`` is a
branch-free Cody-Waite reduction by π/2 with fdlibm's minimax polynomials: within 4e-16 of libm's sine
for |x| < 1.6e6 rad (CTF phases stay below 1e4), so the float32 CTF values it feeds are libm's except,
about once in 10^5 samples, by one float32 ulp (a double within 4e-16 of a float32 rounding tie). All other kernels use libm and fastmath stays off.
"""
import math

import numpy as np

from ._jit import njit

_TWO_OVER_PI = 2.0 / math.pi
# π/2 split into three parts (the first with 33 significant bits, so n·_PIO2_1 is exact for n < 2^20)
_PIO2_1 = 1.5707963267341256e+00
_PIO2_2 = 6.0771005065061922e-11
_PIO2_3 = 2.0222662487959506e-21
_ROUND = 6755399441055744.0   # 1.5·2^52: x + _ROUND - _ROUND rounds x to the nearest integer


@njit(inline="always")
def _reduced(x):
    """(r, q): x = r + q·π/2 with |r| ≤ π/4 (Cody-Waite), and the fdlibm polynomials (sin r, cos r)."""
    t = x * _TWO_OVER_PI + _ROUND
    n = t - _ROUND
    q = np.int64(n)
    r = ((x - n * _PIO2_1) - n * _PIO2_2) - n * _PIO2_3
    r2 = r * r
    s = r + r * r2 * (-1.66666666666666324348e-01 + r2 * (8.33333333332248946124e-03 + r2 * (
        -1.98412698298579493134e-04 + r2 * (2.75573137070700676789e-06 + r2 * (
            -2.50507602534068634195e-08 + r2 * 1.58969099521155010221e-10)))))
    c = 1.0 - 0.5 * r2 + r2 * r2 * (4.16666666666666019037e-02 + r2 * (-1.38888888888741095749e-03 + r2 * (
        2.48015872894767294178e-05 + r2 * (-2.75573143513906633035e-07 + r2 * (
            2.08757232129817482790e-09 + r2 * -1.13596475577881948265e-11)))))
    return q, s, c


@njit(inline="always")
def _quadrant(q, s, c):
    """sin(r + q·π/2) from sin r and cos r, branch-free."""
    odd = np.float64(q & 1)                       # quadrants 1, 3: cosine of the remainder
    sign = 1.0 - 2.0 * np.float64((q >> 1) & 1)    # quadrants 2, 3: negative
    return sign * (s + odd * (c - s))


@njit(inline="always")
def sin_vectorisable(x):
    """sin(x) in double, branch-free (see the module docstring for its range and accuracy)."""
    q, s, c = _reduced(x)
    return _quadrant(q, s, c)


@njit(inline="always")
def sincos_vectorisable(x):
    """(sin x, cos x) from one reduction: cos x = sin(x + π/2) is the next quadrant of the same remainder."""
    q, s, c = _reduced(x)
    return _quadrant(q, s, c), _quadrant(q + 1, s, c)
