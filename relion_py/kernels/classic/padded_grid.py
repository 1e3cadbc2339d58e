"""The padded Fourier grid of RELION's ``BackProjector`` (src/backprojector.h: ``data`` and ``weight``).

The padded grid (``data`` complex128 and ``weight`` float64) has shape ``(pad, pad, P + 2)`` in (z, y, x)
order, ``pad = 2 (P + 1) + 1`` and ``P = round(pf · r_max)``. Logical (signed) z and y run over
``-(P + 1) .. P + 1`` and sit at array index ``logical + P + 1``; x runs over ``0 .. P + 1``. Only the
x >= 0 half is stored (Hermitian symmetry). While particles are inserted, data and weight live interleaved
in one *accumulator* ``acc`` of shape ``(pad, pad, P + 2, 3)`` float64 (real, imaginary, weight): a splat
then touches half as many cache lines (the insertion is memory-bound). ``split_accumulator`` turns it into
the (data, weight) pair used by the later steps (symmetrisation, ``BackProjector::reconstruct``).
"""
import numpy as np


def new_accumulator(pad):
    """A zeroed insertion accumulator (pad, pad, pad//2+1, 3) float64: real, imaginary, weight."""
    return np.zeros((pad, pad, pad // 2 + 1, 3))


def split_accumulator(acc):
    """(data complex128, weight float64), both (pad, pad, pad//2+1), of an insertion accumulator."""
    data = np.empty(acc.shape[:3], np.complex128)
    data.real = acc[..., 0]
    data.imag = acc[..., 1]
    return data, np.ascontiguousarray(acc[..., 2])


def check_accumulator(acc):
    """Raise ValueError unless ``acc`` is an insertion accumulator (see module doc)."""
    if acc.dtype != np.float64 or acc.ndim != 4 or acc.shape[3] != 3 or not acc.flags.c_contiguous:
        raise ValueError("insertion accumulator must be a C-contiguous (pad, pad, pad//2+1, 3) float64 array")
    pad = acc.shape[0]
    if acc.shape[1] != pad or acc.shape[2] != pad // 2 + 1 or pad % 2 != 1:
        raise ValueError(f"insertion accumulator has shape {acc.shape}, expected (pad, pad, pad//2+1, 3), "
                         "pad odd")


def check_grid(data, weight):
    """Raise ValueError unless (data, weight) is a padded grid (see module doc)."""
    if data.dtype != np.complex128 or weight.dtype != np.float64:
        raise ValueError("padded grid must be complex128 data and float64 weight")
    if data.shape != weight.shape or data.ndim != 3 or not data.flags.c_contiguous \
            or not weight.flags.c_contiguous:
        raise ValueError("padded grid: data and weight must be C-contiguous arrays of the same 3-D shape")
    pad = data.shape[0]
    if data.shape[1] != pad or data.shape[2] != pad // 2 + 1 or pad % 2 != 1:
        raise ValueError(f"padded grid has shape {data.shape}, expected (pad, pad, pad//2+1) with pad odd")


# --------------------------------------------------------------------------------------------------------
# Symmetrisation
