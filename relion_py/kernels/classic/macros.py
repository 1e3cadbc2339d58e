"""RELION's integer conversions of src/macros.h (``ROUND``, ``FLOOR``, ``CEIL``), for compiled kernels and
for the scalars the programs set up with them."""
import math

from .._jit import njit


@njit(inline="always")
def iround(x):
    """RELION ``ROUND``: half away from zero, then truncation (``(int)(x ± 0.5)``)."""
    if x > 0.0:
        return int(x + 0.5)
    return int(x - 0.5)


@njit(inline="always")
def ifloor(x):
    """RELION ``FLOOR``: ``(int)floor(x)``."""
    return int(math.floor(x))


@njit(inline="always")
def iceil(x):
    """RELION ``CEIL``: ``(int)ceil(x)``."""
    return int(math.ceil(x))


def relion_round(x):
    """Python twin of ``ROUND`` for set-up scalars."""
    return int(x + 0.5) if x > 0 else int(x - 0.5)
