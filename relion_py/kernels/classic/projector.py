"""The ``Projector`` steps of RELION's reconstruction (src/projector.h, src/projector.cpp): ``decenter``
(padded grid to FFTW order) and ``griddingCorrect`` (division by the interpolation kernel's transform)."""
import math

import numpy as np

from .._jit import njit


def decenter(grid, max_r2):
    """The padded grid in FFTW half-transform order (logical index 0 at array index 0), zero beyond
    ``kp² + ip² + jp² > max_r2``. Mirrors ``Projector::decenter``. grid: (pad, pad, pad//2+1)."""
    pad = grid.shape[0]
    off = (pad - 1) // 2
    out = np.roll(grid, (-off, -off), axis=(0, 1))
    q = np.arange(pad, dtype=np.int32)         # int32 squares (pad < 2^15): half the temporary's bytes
    q = np.where(q < pad // 2 + 1, q, q - pad)
    x = np.arange(grid.shape[2], dtype=np.int32)
    r2 = q[:, None, None] ** 2 + q[None, :, None] ** 2 + x[None, None, :] ** 2
    out[r2 > max_r2] = 0
    return out


@njit
def _gridding_correct(vol, size_pf, sinc_power):
    nz, ny, nx = vol.shape
    oz, oy, ox = nz // 2, ny // 2, nx // 2
    for k in range(nz):
        for i in range(ny):
            for j in range(nx):
                r = math.sqrt(float((k - oz) ** 2 + (i - oy) ** 2 + (j - ox) ** 2))
                if r > 0.:
                    rval = r / size_pf
                    sinc = math.sin(math.pi * rval) / (math.pi * rval)
                    if sinc_power == 1:
                        vol[k, i, j] /= sinc
                    else:
                        vol[k, i, j] /= sinc * sinc


def gridding_correct(vol, size_pf, sinc_power=2):
    """Divide a real-space map by the transform of the interpolation kernel, in place
    (``Projector::griddingCorrect``): ÷ sinc²(r / (N·pf)) (trilinear), or ÷ sinc for pure nearest neighbour
    (``sinc_power`` 1). size_pf: N·pf as RELION computes it (float32 product). vol: (N, N, N) float64."""
    _gridding_correct(vol, float(size_pf), int(sinc_power))
