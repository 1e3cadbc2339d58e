"""Image statistics in RELION's summation order."""
import numpy as np

from ._jit import njit


@njit
def _running_moments(flat):
    lo = flat[0]
    hi = flat[0]
    total = 0.0
    total_sq = 0.0
    for k in range(flat.size):
        v = flat[k]
        d = np.float64(v)
        total += d
        total_sq += d * d
        if v < lo:          # strict: the first occurrence of the extreme wins (sign of a zero);
            lo = v          # NaNs never compare, so they are skipped unless flat[0] is one
        if v > hi:
            hi = v
    return np.float64(lo), np.float64(hi), total, total_sq


def running_moments(values):
    """(min, max, Σv, Σv²) with plain running sums in double, as ``MultidimArray::computeStats`` does.

    values: any float array (flattened, not empty).
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    return _running_moments(flat)
