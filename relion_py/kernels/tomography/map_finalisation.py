"""From the accumulated Fourier data and weights to relion_tomo_reconstruct_particle's maps: Fourier-space
symmetrisation, sinc² gridding correction, CTF division (heuristic or Wiener), central crop and
spherical taper. All in double precision, as RELION's ``BufferedImage<double>`` finalisation.

Mirrors ``Symmetry::symmetrise_FS_complex`` / ``symmetrise_FS_real`` (src/jaz/image/symmetry.h) with
``Interpolation::linearXYZ_FftwHalf_complex`` / ``_real`` (src/jaz/image/interpolation.h),
``Reconstruction::griddingCorrect3D_sinc2``, ``ctfCorrect3D_Wiener``, ``ctfCorrect3D_heuristic`` and
``taper`` (src/jaz/tomography/reconstruction.h) with ``RadialAvg::fftwHalf_3D_lin``
(src/jaz/image/radial_avg.h), and ``Padding::unpadCenter3D_full``. See docs/reconstruction.md, part A.
The symmetrisation is a Numba kernel; the CTF division and the taper are extraction's own kernels
(``volume_filters``) run in double; the rest is whole-array numpy.

Volumes are numpy [z, y, x]; half-grid volumes (s, s, s//2+1) with signed y, z (Nyquist negative).
jaz's ``FFT::Both`` normalisation: forward = rfftn / s^1.5, inverse = irfftn · s^1.5.
"""
import math

import numba
import numpy as np
import scipy.fft

from .._jit import njit
from .volume_filters import divide_heuristic, divide_wiener
from .volume_filters import taper as volume_taper


@njit(parallel=True)
def _symmetrise(data, weight, ops, out_data, out_weight):
    d, h, wh = data.shape
    w = 2 * (wh - 1)
    sc = ops.shape[0]
    for z in numba.prange(d):
        zz = float(z) if z < d // 2 else float(z - d)
        for y in range(h):
            yy = float(y) if y < h // 2 else float(y - h)
            for x in range(wh):
                xx = float(x)
                acc = data[z, y, x]
                acc_w = weight[z, y, x]
                for k in range(sc):
                    r = ops[k]
                    px = r[0, 0] * xx + r[0, 1] * yy + r[0, 2] * zz
                    py = r[1, 0] * xx + r[1, 1] * yy + r[1, 2] * zz
                    pz = r[2, 0] * xx + r[2, 1] * yy + r[2, 2] * zz
                    # linearXYZ_FftwHalf_*: the Friedel mate unless x > 0 (strictly)
                    if px > 0.0:
                        xd, yd, zd = px, py, pz
                        conj = False
                    else:
                        xd, yd, zd = -px, -py, -pz
                        conj = True
                    if yd < 0.0:
                        yd += h
                    if zd < 0.0:
                        zd += d
                    x0 = int(xd)
                    y0 = int(yd)
                    z0 = int(zd)
                    fx = xd - x0
                    fy = yd - y0
                    fz = zd - z0
                    if x0 >= wh:
                        x0 = wh - 1
                    x1 = x0 + 1
                    if x1 >= wh:
                        x1 = wh - 2
                    if y0 < 0:
                        y0 = 0
                    elif y0 >= h:
                        y0 = h - 1
                    y1 = (y0 + 1) % h
                    if z0 < 0:
                        z0 = 0
                    elif z0 >= d:
                        z0 = d - 1
                    z1 = (z0 + 1) % d
                    gx = 1.0 - fx
                    gy = 1.0 - fy
                    gz = 1.0 - fz
                    v00 = gx * data[z0, y0, x0] + fx * data[z0, y0, x1]
                    v10 = gx * data[z0, y1, x0] + fx * data[z0, y1, x1]
                    v01 = gx * data[z1, y0, x0] + fx * data[z1, y0, x1]
                    v11 = gx * data[z1, y1, x0] + fx * data[z1, y1, x1]
                    val = gz * (gy * v00 + fy * v10) + fz * (gy * v01 + fy * v11)
                    if conj:
                        val = val.conjugate()
                    u00 = gx * weight[z0, y0, x0] + fx * weight[z0, y0, x1]
                    u10 = gx * weight[z0, y1, x0] + fx * weight[z0, y1, x1]
                    u01 = gx * weight[z1, y0, x0] + fx * weight[z1, y0, x1]
                    u11 = gx * weight[z1, y1, x0] + fx * weight[z1, y1, x1]
                    acc_w += gz * (gy * u00 + fy * u10) + fz * (gy * u01 + fy * u11)
                    tx = r[0, 3]
                    ty = r[1, 3]
                    tz = r[2, 3]
                    if tx != 0.0 or ty != 0.0 or tz != 0.0:
                        dotp = 2.0 * math.pi * ((xx / w) * tx + (yy / h) * ty + (zz / d) * tz)
                        val = val * complex(math.cos(dotp), math.sin(dotp))
                    acc += val
                out_data[z, y, x] = acc / (sc + 1)
                out_weight[z, y, x] = acc_w / (sc + 1)


def symmetrise(data, weight, operators):
    """Average a half-grid volume and its weights over symmetry operators (identity implicit).

    data: (s, s, s//2+1) complex128; weight: same shape float64; operators: (m, 4, 4) float64 (3x3 part
    applied to the voxel's frequency k, translation column giving the phase exp(2πi·k·t/s) of the data).
    Returns new arrays (D + Σ I(R·k)·e^{iφ}) / (m + 1), (W + Σ I(R·k)) / (m + 1).
    """
    out_d = np.empty_like(data)
    out_w = np.empty_like(weight)
    _symmetrise(np.ascontiguousarray(data, np.complex128), np.ascontiguousarray(weight, np.float64),
                np.ascontiguousarray(operators, np.float64), out_d, out_w)
    return out_d, out_w


def gridding_correct(data, threads=1):
    """``griddingCorrect3D_sinc2`` (centred): real-space volume d = s^1.5·irfftn(D·(-1)^(x+y+z)) divided
    by sinc²(|r - s/2| / s) (floored at 0.01). data: (s, s, s//2+1) complex128 (not modified).
    Returns (s, s, s) float64."""
    s = data.shape[0]
    i = np.arange(s)
    sign_yz = np.where((i[:, None] + i[None, :]) % 2 == 0, 1.0, -1.0)
    sign_x = np.where(np.arange(data.shape[2]) % 2 == 0, 1.0, -1.0)
    centred = data * (sign_yz[:, :, None] * sign_x[None, None, :])
    vol = scipy.fft.irfftn(centred, s=(s, s, s), workers=threads) * (s ** 3 / math.sqrt(float(s ** 3)))
    c = np.arange(s, dtype=np.float64) - s // 2
    r = np.sqrt(c[None, None, :] ** 2 + c[None, :, None] ** 2 + c[:, None, None] ** 2)
    rho = r / s
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.sin(math.pi * rho) / (math.pi * rho)
    sinc2 = sinc * sinc
    div = np.where((sinc2 < 1e-2) | (rho > 1.0), 1e-2, sinc2)
    div[r == 0] = 1.0
    return vol / div


def ctf_divide(vol, weight, snr, threads=1):
    """``ctfCorrect3D_Wiener`` (snr > 0) or ``ctfCorrect3D_heuristic`` in Fourier space, in double, with the
    same kernels as extraction's --div (``volume_filters``). vol: (s, s, s) float64 real-space data; weight:
    (s, s, s//2+1) float64. Returns (s, s, s) float64."""
    s = vol.shape[0]
    norm = math.sqrt(float(s ** 3))
    spec = scipy.fft.rfftn(vol, workers=threads) / norm
    weight = np.ascontiguousarray(weight, np.float64)
    if snr > 0:
        divide_wiener(spec, weight, 1.0 / snr)
    else:
        divide_heuristic(spec, weight, 0.001)
    return scipy.fft.irfftn(spec, s=(s, s, s), workers=threads) * (s ** 3 / norm)


def crop_centre(vol, crop):
    """``Padding::unpadCenter3D_full`` with b = (s - crop) // 2: the central s - 2b voxels per axis."""
    s = vol.shape[0]
    b = (s - crop) // 2
    return vol[b:s - b, b:s - b, b:s - b].copy()


def taper(vol, dist, subtract_mean=True):
    """``Reconstruction::taper`` on a copy of ``vol`` (float64): :func:`volume_filters.taper`."""
    return volume_taper(np.array(vol, np.float64), dist, subtract_mean)
