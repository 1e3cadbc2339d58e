"""The one place where Numba compilation options are chosen.

fastmath is off everywhere: the kernels must reproduce RELION's float32/double rounding, and
fastmath's reassociation and flush-to-zero would change results at the 1e-7 level.
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
