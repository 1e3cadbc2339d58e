"""Zeroing and adding the part of tilt-series reconstruction accumulators that the backward insertion can
write: the voxels with |k|² ≤ (s/2 + 1)² of the half grid, about half of it.

The insertion (:mod:`~relion_py.kernels.tomography.insertion_backward`) writes a voxel only if |k|² ≤ R² for
its slice's radius R, a dose x range (``tomography.dose.dose_x_ranges``: at most s/2 + 1). The rest of an
accumulator that starts zeroed stays +0.0, and adding or zeroing it changes no bit: so the batch accumulators
of :class:`~relion_py.runtime.partition.OrderedReduction` are zeroed and added to the total inside the sphere
only, halving those passes over memory.
"""
import math

from .._jit import njit


@njit
def _sphere_rows(a, b, r, add):
    n_half, s, _, sh, _ = a.shape
    half = s // 2
    r2 = r * r
    for h in range(n_half):
        for z in range(max(-half, -r), min(half - 1, r) + 1):
            zi = z + s if z < 0 else z
            rz = r2 - z * z
            yl = int(math.sqrt(rz))
            for y in range(max(-half, -yl), min(half - 1, yl) + 1):
                yi = y + s if y < 0 else y
                xl = min(sh - 1, int(math.sqrt(rz - y * y)))
                for x in range(xl + 1):
                    for c in range(3):
                        if add:
                            a[h, zi, yi, x, c] += b[h, zi, yi, x, c]
                        else:
                            a[h, zi, yi, x, c] = 0.0


def reach(s):
    """Radius (px) of the sphere the backward insertion can write in an s-px box (the largest dose x range)."""
    return s // 2 + 1


def _check(acc):
    if acc.ndim != 5 or acc.shape[-1] != 3 or acc.shape[2] != acc.shape[1] or acc.shape[3] != acc.shape[1] // 2 + 1:
        raise ValueError(f"sphere_sums: {acc.shape} is not an (H, s, s, s//2+1, 3) accumulator")


def zero_inside_sphere(acc):
    """acc[..] = 0 for |k| ≤ s/2 + 1, in place. acc: (H, s, s, s//2+1, 3) float64 whose other voxels are 0."""
    _check(acc)
    _sphere_rows(acc, acc, reach(acc.shape[1]), False)


def add_inside_sphere(total, acc):
    """total += acc for |k| ≤ s/2 + 1, in place (elsewhere both are 0). Both (H, s, s, s//2+1, 3) float64."""
    _check(total)
    if acc.shape != total.shape:
        raise ValueError(f"add_inside_sphere: {acc.shape} and {total.shape} differ")
    _sphere_rows(total, acc, reach(total.shape[1]), True)
