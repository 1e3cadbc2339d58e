"""Noise whitening weights from the tilt images' power spectra (--whiten).

Mirrors ``Tomogram::computeNoiseWeight`` (src/jaz/tomography/tomogram.cpp) with
``PowerSpectrum::periodogramAverage2D`` and ``RadialAvg::fftwHalf_2D_lin`` / ``toFftwHalf_2D_lin``.
"""
import numpy as np

from .half_grid import half_grid


def radial_average(values, radius, n_bins):
    """Linearly binned radial average: a value at radius r adds weight 1-(r-r0) to bin r0 = trunc(r)
    and r-r0 to bin r0+1 (bins 0..n_bins-1); empty bins give 0 (``RadialAvg::fftwHalf_2D_lin``)."""
    r0 = np.floor(radius).astype(np.int64)
    frac = radius - r0
    total, weight = np.zeros(n_bins), np.zeros(n_bins)
    for idx, w in ((r0, 1.0 - frac), (r0 + 1, frac)):
        ok = idx < n_bins
        np.add.at(total, idx[ok], (w * values)[ok])
        np.add.at(weight, idx[ok], w[ok])
    return np.divide(total, weight, out=np.zeros(n_bins), where=weight > 0)


def noise_weights(images, box, binning, threads=1):
    """Per-frame whitening weights 1/sqrt(radial power) on the half grid of the binned ``box``.

    images: a TiltImages; the power spectrum of frame f is the mean |rfft2(tile, ortho)|² over the
    square tiles of side s0 = int(binning·box + 0.5) at a step of s0/2 that fit in the image.
    Returns (fc, box, box//2+1) float32.
    """
    import scipy.fft   # only --whiten uses it: not imported at start-up (0.1 s)
    s0 = int(binning * box + 0.5)
    step = int(s0 / 2.0)
    width, height = images.image_size
    bx, by = np.meshgrid(np.arange((width - s0) // step + 1), np.arange((height - s0) // step + 1))
    origins = np.stack([bx.ravel() * step, by.ravel() * step], axis=1).astype(np.int64)
    n_bins = s0 // 2 + 1
    kx0, ky0 = half_grid(s0)
    r_tiles = np.sqrt(kx0 * kx0 + ky0 * ky0).ravel()
    kx, ky = half_grid(box)
    rd = (binning * np.sqrt(kx * kx + ky * ky)).ravel()
    r0 = np.floor(rd).astype(np.int64)
    frac = rd - r0
    out = np.empty((images.n_frames, box, box // 2 + 1), np.float32)
    tiles = np.empty((len(origins), s0, s0), np.float32)
    for f in range(images.n_frames):
        images.read_windows(np.full(len(origins), f, np.int64), origins, tiles)
        power = np.mean(np.abs(scipy.fft.rfft2(tiles.astype(np.float64), norm="ortho", workers=threads)) ** 2, axis=0)
        p1 = radial_average(power.ravel(), r_tiles, n_bins)
        w1 = np.divide(1.0, np.sqrt(p1), out=np.zeros(n_bins), where=p1 > 0).astype(np.float32)
        inside = r0 + 1 < n_bins
        lo, hi = np.minimum(r0, n_bins - 1), np.minimum(r0 + 1, n_bins - 1)
        value = np.where(inside, (1.0 - frac) * w1[lo] + frac * w1[hi], w1[n_bins - 1])
        out[f] = value.reshape(box, box // 2 + 1)
    return out
