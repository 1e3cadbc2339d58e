"""The array helpers of RELION's src/fftw.h / src/fftw.cpp used around ``BackProjector``: the normalisation
of ``FourierTransformer::FourierTransform``, ``shiftImageInFourierTransform``, ``windowFourierTransform`` and
``CenterFFTbySign`` (the transforms themselves are run by the callers)."""
import math

import numpy as np

from .._jit import njit


@njit
def _normalise_and_weight(f, size, divide, weight, weigh):
    flat = f.reshape(-1)
    w = weight.reshape(-1)
    # numpy's complex division by (size, 0) (Smith's method): both parts times 1/size
    rat = 0.0 / size
    scl = 1.0 / (size + 0.0 * rat)
    for i in range(flat.size):
        re = flat[i].real
        im = flat[i].imag
        if divide:
            re, im = (re + im * rat) * scl, (im - re * rat) * scl
        if weigh:
            c = np.float64(w[i])        # numpy's complex product with (c, 0)
            re, im = re * c - im * 0.0, re * 0.0 + im * c
        flat[i] = complex(re, im)


def normalise_and_weight(f, size=None, weight=None):
    """``f /= size`` (the normalisation of ``FourierTransformer::FourierTransform``, src/fftw.cpp), then
    ``f *= weight`` (the CTF of ``Reconstructor::backprojectOneParticle``), in place and in one pass, each
    rounded as numpy's complex128 arithmetic rounds it: the division by the real ``size`` is a complex
    division by (size, 0), i.e. both parts times 1/size (RELION divides both parts by size: at most one
    unit in the last place apart), and ``weight`` multiplies as the complex (weight, 0), signed zeros
    included. f: C-contiguous complex128; size: float or None (no division); weight: real array of f's
    shape or None."""
    if f.dtype != np.complex128 or not f.flags.c_contiguous:
        raise ValueError("normalise_and_weight: f must be C-contiguous complex128")
    if weight is not None and weight.shape != f.shape:
        raise ValueError(f"normalise_and_weight: weight {weight.shape} does not match f {f.shape}")
    _normalise_and_weight(f, float(size or 1.0), size is not None,
                          np.empty(0) if weight is None else np.ascontiguousarray(weight), weight is not None)
    return f


@njit
def _shift_fourier(f, oridim, tx, ty, tz):
    xs = tx / -oridim
    ys = ty / -oridim
    zs = tz / -oridim
    if abs(xs) < 1e-6 and abs(ys) < 1e-6 and abs(zs) < 1e-6:
        return
    nz, ny, nx = f.shape
    for k in range(nz):
        z = float(k) if k < nx else float(k - nz)
        if nz == 1:
            z = 0.0
        for i in range(ny):
            y = float(i) if i < nx else float(i - ny)
            for j in range(nx):
                x = float(j)
                dotp = 2 * math.pi * (x * xs + y * ys + z * zs)
                a = math.cos(dotp)
                b = math.sin(dotp)
                c = f[k, i, j].real
                d = f[k, i, j].imag
                ac = a * c
                bd = b * d
                ab_cd = (a + b) * (c + d)
                f[k, i, j] = complex(ac - bd, ab_cd - ac - bd)


def shift_fourier(f, oridim, shift):
    """Translate the content of an image by ``shift`` pixels through phase shifts of its half transform,
    in place: ``F(k) · exp(-2πi k·t / n)``.

    Mirrors ``shiftImageInFourierTransform`` (src/fftw.cpp) in double precision, including its skip when
    every ``|t_i| / n < 1e-6`` and its three-multiplication complex product. Signed frequencies use the
    xmipp convention (Nyquist row positive).
    f: (n, n//2+1) or (n, n, n//2+1) complex128, modified in place; oridim: n; shift: (tx, ty[, tz]) px.
    """
    if f.dtype != np.complex128 or not f.flags.c_contiguous:
        raise ValueError("shift_fourier: f must be C-contiguous complex128")
    t = [float(v) for v in shift] + [0.0] * (3 - len(shift))
    f3 = f if f.ndim == 3 else f.reshape((1,) + f.shape)
    _shift_fourier(f3, float(oridim), t[0], t[1], t[2])


def window_fourier_transform(fin, newdim):
    """Resize a half transform to the half transform of a newdim-sized cube (``windowFourierTransform``,
    src/fftw.h): same signed indices (xmipp convention for both grids); when the output is larger, only
    input elements with r² <= (xsize_in - 1)² are copied. fin: (n, n, n//2+1) complex128 (n may be odd).
    Returns (newdim, newdim, newdim//2+1) complex128."""
    n = fin.shape[0]
    hin = fin.shape[2]
    nh = newdim // 2 + 1
    if newdim == n and nh == hin:
        return fin.copy()
    out = np.zeros((newdim, newdim, nh), dtype=fin.dtype)
    if nh > hin:
        kin = np.arange(n)
        kin = np.where(kin < hin, kin, kin - n)
        r2 = kin[:, None, None] ** 2 + kin[None, :, None] ** 2 + np.arange(hin)[None, None, :] ** 2
        src = np.where(r2 <= (hin - 1) ** 2, fin, 0)
        small, nx = n, hin
    else:
        src, small, nx = fin, newdim, nh
    # signed indices 0 .. pos-1 and -neg .. -1 along z and y, the same in both grids
    pos = (hin if nh > hin else nh)
    neg = small - pos
    blocks = [(slice(0, pos), slice(0, pos)), (slice(newdim - neg, newdim), slice(n - neg, n))]
    for zo, zi in blocks:
        for yo, yi in blocks:
            out[zo, yo, :nx] = src[zi, yi, :nx]
    return out


def center_fft_by_sign(f):
    """``CenterFFTbySign``: × -1 where the sum of the array indices is odd, in place."""
    k = np.arange(f.shape[0])[:, None, None]
    i = np.arange(f.shape[1])[None, :, None]
    j = np.arange(f.shape[2])[None, None, :]
    f[((k + i + j) & 1) == 1] *= -1
