"""The one place where Numba compilation options are chosen.

fastmath is off everywhere: the kernels must reproduce RELION's float32/double rounding, and
fastmath's reassociation and flush-to-zero would change results at the 1e-7 level.

Kernels copy arrays element by element, never by assigning an array to a slice (``out[i] = a[lo:hi]``): for
every such assignment Numba compiles the formatting of its shape-mismatch error message, about 3 s of a
program's first run (bench/bench_cold_start.py).
"""
import numba

JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


def njit(*args, **kwargs):
    """``numba.njit`` with the project's options (``parallel=True`` may be added per kernel)."""
    opts = dict(JIT_OPTIONS)
    opts.update(kwargs)
    if args and callable(args[0]):
        return numba.njit(**opts)(args[0])
    return numba.njit(*args, **opts)
