"""Fourier-space weighting and real-space tapering of 3-D volumes (the optional outputs of
relion_tomo_subtomo's pseudo-subtomograms): cone down-weighting, CTF division (heuristic threshold or
Wiener), multiplicity normalisation and the spherical taper.

Mirrors the ``--cone_weight`` loop of ``SubtomoProgram::processTomograms`` (src/jaz/tomography/programs/
subtomo.cpp) and ``Reconstruction::ctfCorrect3D_heuristic``, ``ctfCorrect3D_Wiener``, ``taper``
(src/jaz/tomography/reconstruction.h) with ``RadialAvg::fftwHalf_3D_lin`` (src/jaz/image/radial_avg.h).
Float32 arithmetic where RELION's is float (the ``tComplex<float>`` operators), double where it is double.
FFTs are done by the callers.
"""
import math

import numpy as np

from .._jit import njit


@njit
def _cone_weight(spectra, ctf_mult, rotations, slope, sig0):
    n, s, _, sh = spectra.shape
    for p in range(n):
        r = rotations[p]
        for z in range(s):
            zz = float(z) if z < s // 2 else float(z - s)
            for y in range(s):
                yy = float(y) if y < s // 2 else float(y - s)
                for x in range(sh):
                    xx = float(x)
                    px = r[0, 0] * xx + r[0, 1] * yy + r[0, 2] * zz
                    py = r[1, 0] * xx + r[1, 1] * yy + r[1, 2] * zz
                    pz = r[2, 0] * xx + r[2, 1] * yy + r[2, 2] * zz
                    rho = math.sqrt(px * px + py * py)
                    t = rho / (abs(pz) * slope + sig0)
                    m = 1.0 - math.exp(-0.5 * t * t)
                    mf = np.float32(m)
                    v = spectra[p, z, y, x]
                    spectra[p, z, y, x] = np.complex64(complex(v.real * mf, v.imag * mf))
                    ctf_mult[p, z, y, x] = np.float32(np.float64(ctf_mult[p, z, y, x]) * m)
                    ctf_mult[p, s + z, y, x] = np.float32(np.float64(ctf_mult[p, s + z, y, x]) * m)


def cone_weight(spectra, ctf_mult, rotations, cone_angle, cone_sig0):
    """Down-weight a double cone along each particle's z axis, in place.

    The weight at half-grid frequency k (signed y, z; Nyquist negative) is 1 - exp(-t²/2) with
    p = R·k, t = |p_xy| / (|p_z|·sin(cone_angle/2) + cone_sig0): the data are multiplied by its float32
    value (complex float product), the CTF² and multiplicity volumes by it in double.

    spectra:   (n, s, s, s//2+1) complex64, forward transforms (any normalisation) of the data volumes
    ctf_mult:  (n, 2s, s, s//2+1) float32, CTF² in [:, :s] and multiplicity in [:, s:]
    rotations: (n, 3, 3) float64, A_subtomogram · A_particle of each particle
    cone_angle: degrees (full opening angle); cone_sig0: width at z = 0 (px)
    """
    if spectra.shape[0]:
        slope = math.sin(cone_angle * 0.5 * math.pi / 180.0)
        _cone_weight(spectra, ctf_mult, np.ascontiguousarray(rotations, np.float64), slope, float(cone_sig0))


@njit
def _radial_average_half_3d(img):
    d, h, wh = img.shape
    avg = np.zeros(wh, img.dtype)       # accumulated in the volume's precision (RELION's RadialAvg<T>)
    wgh = np.zeros(wh, np.float64)
    for z in range(d):
        zz = float(z - d) if z >= d // 2 else float(z)
        for y in range(h):
            yy = float(y - h) if y >= h // 2 else float(y)
            for x in range(wh):
                xx = float(x)
                r = math.sqrt(xx * xx + yy * yy + zz * zz)
                r0 = int(r)
                r1 = r0 + 1
                val = np.float64(img[z, y, x])
                w1 = r - r0
                w0 = 1.0 - w1
                if r0 < wh:
                    avg[r0] = np.float64(avg[r0]) + w0 * val      # rounded to T by the store
                    wgh[r0] += w0
                if r1 < wh:
                    avg[r1] = np.float64(avg[r1]) + w1 * val
                    wgh[r1] += w1
    for i in range(wh):
        if wgh[i] > 0.0:
            avg[i] = np.float64(avg[i]) / wgh[i]
    return avg


def radial_average_half_3d(img):
    """Radial average of a half-grid volume with linear binning (``RadialAvg::fftwHalf_3D_lin``): each
    voxel adds (1-f)·v to bin floor(r) and f·v to bin floor(r)+1 (bins 0..wh-1), accumulated in the volume's
    precision, divided by the summed (double) weights. img: (s, s, s//2+1) float32 or float64 → (s//2+1,)
    of the same dtype."""
    img = np.asarray(img)
    return _radial_average_half_3d(np.ascontiguousarray(img, np.float64 if img.dtype == np.float64 else np.float32))


@njit
def _divide_heuristic(spectrum, ctf, avg, fraction):
    d, h, wh = spectrum.shape
    s = avg.shape[0]
    rounded = np.empty(1, ctf.dtype)        # rounds a double to the weights' precision T, as RELION's T locals do
    for z in range(d):
        zz = float(z - d) if z >= d // 2 else float(z)
        for y in range(h):
            yy = float(y - h) if y >= h // 2 else float(y)
            for x in range(wh):
                xx = float(x)
                r = math.sqrt(xx * xx + yy * yy + zz * zz)
                r0 = int(r)
                r1 = r0 + 1
                if r1 >= s:
                    spectrum[z, y, x] = 0.0
                    continue
                f = r - r0
                rounded[0] = f * np.float64(avg[r1]) + (1.0 - f) * np.float64(avg[r0])
                rounded[0] = np.float64(rounded[0]) * fraction
                threshold = rounded[0]
                wg = ctf[z, y, x]
                if wg < threshold:
                    wg = threshold
                if wg > 0.0:
                    spectrum[z, y, x] = _complex_divide(spectrum[z, y, x], wg)


@njit(inline="always")
def _complex_divide(v, wg):
    """tComplex<T> /= tComplex<T>(wg): ((re·wg + im·0) / (wg·wg), (im·wg - re·0) / (wg·wg)), in T."""
    cd = wg * wg
    zero = wg - wg
    re = v.real * wg + v.imag * zero
    im = v.imag * wg - v.real * zero
    return complex(re / cd, im / cd)


def divide_heuristic(spectrum, ctf, fraction=0.001):
    """``Reconstruction::ctfCorrect3D_heuristic``'s division, in place: each voxel is divided by
    max(C, fraction · radial-average of C interpolated at |k|); voxels whose radius reaches the last bin
    are zeroed. spectrum: (s, s, s//2+1) complex64 (extraction's --div, float) or complex128
    (relion_tomo_reconstruct_particle, double); ctf: same shape, float32 or float64 to match."""
    avg = radial_average_half_3d(ctf)
    _divide_heuristic(spectrum, np.ascontiguousarray(ctf, avg.dtype), avg, float(fraction))
    return spectrum


@njit
def _divide_wiener(spectrum, ctf, offset):
    d, h, wh = spectrum.shape
    rounded = np.empty(1, ctf.dtype)
    for z in range(d):
        for y in range(h):
            for x in range(wh):
                rounded[0] = np.float64(ctf[z, y, x]) + offset
                spectrum[z, y, x] = _complex_divide(spectrum[z, y, x], rounded[0])


def divide_wiener(spectrum, ctf, offset):
    """``Reconstruction::ctfCorrect3D_Wiener``'s division, in place: by T(C + offset). spectrum complex64 or
    complex128; ctf float32 or float64 (T)."""
    ctf = np.asarray(ctf)
    _divide_wiener(spectrum, np.ascontiguousarray(ctf, np.float64 if ctf.dtype == np.float64 else np.float32),
                   float(offset))
    return spectrum


@njit
def _taper(img, dist, do_center):
    s = img.shape[2]
    m = s / 2.0
    inner_avg = 0.0
    if do_center:
        inner_wgh = 0.0
        for z in range(s):
            for y in range(s):
                for x in range(s):
                    dx, dy, dz = x - m, y - m, z - m
                    r = math.sqrt(dx * dx + dy * dy + dz * dz)
                    if r < m:
                        c = 1.0 if r < m - dist else 0.5 - 0.5 * math.cos(math.pi * (m - r) / dist)
                        inner_avg += c * img[z, y, x]
                        inner_wgh += c
        inner_avg /= inner_wgh
    for z in range(s):
        for y in range(s):
            for x in range(s):
                dx, dy, dz = x - m, y - m, z - m
                r = math.sqrt(dx * dx + dy * dy + dz * dz)
                if r < m:
                    c = 1.0 if r < m - dist else 0.5 - 0.5 * math.cos(math.pi * (m - r) / dist)
                    img[z, y, x] = c * (img[z, y, x] - inner_avg)      # rounded to the volume's dtype
                else:
                    img[z, y, x] = 0.0


def taper(img, dist, do_center=True):
    """``Reconstruction::taper``, in place: a cosine edge of ``dist`` px against the sphere of radius s/2
    around voxel (s/2, s/2, s/2) after subtracting the edge-weighted mean inside it (``do_center``);
    zero outside. img: (s, s, s) float32 or float64."""
    _taper(img, float(dist), bool(do_center))
    return img
