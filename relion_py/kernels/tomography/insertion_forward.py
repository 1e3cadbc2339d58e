"""Forward (pixel-driven) insertion of 2-D central slices into 3-D half-complex Fourier volumes, with
trilinear weights and a multiplicity volume: the Fourier backprojection of relion_tomo_subtomo's
3-D pseudo-subtomograms.

Mirrors ``FourierBackprojection::backprojectSlice_forward_with_multiplicity`` (the overload with
per-row x ranges; src/jaz/tomography/projection/Fourier_backprojection.h), followed by the ``(-1)^(x+y+z)``
modulation of ``Centering::shiftInSitu`` (src/jaz/image/centering.h) and the FFT scale of
``SubtomoProgram::processTomograms``. FFTs are done by the callers.
"""
import math

import numpy as np

from ...runtime.errors import RelionPyError
from .._jit import njit


@njit(inline="always")
def _splat(acc, p, zi, yi, xg, m, vr, vi, w):
    """Add one trilinear contribution to voxel (zi, yi, xg) of particle p's interleaved accumulator
    (data re, data im, CTF², multiplicity): products formed in double and rounded to float32 before a
    float32 addition (``tComplex<float>`` arithmetic); the multiplicity as float(double(M) + m)."""
    acc[p, zi, yi, xg, 0] += np.float32(m * vr)
    acc[p, zi, yi, xg, 1] += np.float32(m * vi)
    acc[p, zi, yi, xg, 2] += np.float32(m * w)
    acc[p, zi, yi, xg, 3] = np.float32(np.float64(acc[p, zi, yi, xg, 3]) + m)


@njit
def _insert_slices_forward(spectra, weights, starts, counts, frames, axes, x_ranges, centred_source, acc):
    s2 = spectra.shape[1]
    s3 = acc.shape[1]
    sh3 = acc.shape[3]
    half2 = s2 // 2
    half3 = s3 // 2
    for p in range(starts.shape[0]):
        for k in range(counts[p]):
            i = starts[p] + k
            f = frames[i]
            ux, uy, uz = axes[i, 0, 0], axes[i, 0, 1], axes[i, 0, 2]
            vx, vy, vz = axes[i, 1, 0], axes[i, 1, 1], axes[i, 1, 2]
            scale = math.sqrt(ux * ux + uy * uy + uz * uz) * math.sqrt(vx * vx + vy * vy + vz * vz)
            for y in range(s2):
                yy = float(y) if y < half2 else float(y - s2)
                x_start = 0 if y < half2 else 1      # x = 0 of the negative rows mirrors a positive one
                for x in range(x_start, x_ranges[f, y]):
                    xx = float(x)
                    px = xx * ux + yy * vx
                    py = xx * uy + yy * vy
                    pz = xx * uz + yy * vz
                    val = spectra[i, y, x]
                    vr = np.float64(val.real)
                    vi = np.float64(val.imag)
                    if centred_source and (x + y) % 2 == 1:   # the 2-D image was not ifftshift-ed
                        vr = -vr
                        vi = -vi
                    w = np.float64(weights[i, y, x])
                    if px < 0.0:                               # Friedel mate: reflect and conjugate
                        px = -px
                        py = -py
                        pz = -pz
                        vi = -vi
                    x0 = int(math.floor(px))
                    y0 = int(math.floor(py))
                    z0 = int(math.floor(pz))
                    fx0 = 1.0 - (px - x0)
                    fx1 = 1.0 - (x0 + 1 - px)
                    for dz in range(2):
                        zg = z0 + dz
                        if zg < -half3 or zg >= half3:
                            continue
                        zi = zg if zg >= 0 else zg + s3
                        fz = 1.0 - abs(pz - zg)
                        for dy in range(2):
                            yg = y0 + dy
                            if yg < -half3 or yg >= half3:
                                continue
                            yi = yg if yg >= 0 else yg + s3
                            fy = 1.0 - abs(py - yg)
                            if x0 < sh3:
                                m = (scale * fx0) * fy * fz
                                _splat(acc, p, zi, yi, x0, m, vr, vi, w)
                                if x0 == 0:                    # Hermitian mirror inside the x = 0 plane
                                    _splat(acc, p, (s3 - zi) % s3, (s3 - yi) % s3, 0, m, vr, -vi, w)
                            if x0 + 1 < sh3:
                                m = (scale * fx1) * fy * fz
                                _splat(acc, p, zi, yi, x0 + 1, m, vr, vi, w)


@njit
def _unpack(acc, scale, decentre, data, ctf_mult):
    n, s3, _, sh3, _ = acc.shape
    for p in range(n):
        for z in range(s3):
            for y in range(s3):
                for x in range(sh3):
                    re = acc[p, z, y, x, 0]
                    im = acc[p, z, y, x, 1]
                    if decentre and (x + y + z) % 2 == 1:
                        re = -re
                        im = -im
                    if scale != 1.0:
                        re = re * scale
                        im = im * scale
                    data[p, z, y, 2 * x] = re
                    data[p, z, y, 2 * x + 1] = im
                    ctf_mult[p, z, y, x] = acc[p, z, y, x, 2]
                    ctf_mult[p, s3 + z, y, x] = acc[p, z, y, x, 3]


def insert_slices_forward(spectra, weights, starts, counts, frames, axes, x_ranges, size, centred_source=False,
                          decentre=False, scale=1.0, workspace=None):
    """Insert every particle's 2-D slices into its own 3-D Fourier volumes.

    For particle p, items ``starts[p] .. starts[p] + counts[p] - 1`` (rows of ``spectra``) are inserted in
    that order: the sample at 2-D frequency (x, ky) goes to 3-D frequency x·u + ky·v (u, v = rows 0 and 1 of
    the item's 3x3 matrix), split trilinearly over 8 voxels with weights scale·fx·fy·fz, scale = |u|·|v|,
    into the data, CTF² (from ``weights``) and multiplicity volumes; rows y ≥ s2/2 start at x = 1; only
    x < x_ranges[frame, y] is used; negative 3-D x is reflected with conjugation; voxels in the x = 0
    plane also receive the conjugate at (-y, -z). Accumulation is float32, as in RELION.

    Optionally (as ``processTomograms`` does next) the data volume is then multiplied by (-1)^(x+y+z)
    (``decentre``; ``Centering::shiftInSitu``) and by the float32 ``scale`` (if != 1).

    spectra:  (n, s2, s2//2+1) complex64, centred 2-D spectra (``centred_source``: spectra of images that
              were NOT ifftshift-ed; the (-1)^(x+y) factor is then applied here)
    weights:  (n, s2, s2//2+1) float32, CTF² weights
    starts, counts: (n_particles,) int64 item ranges; frames: (n,) int64 frame of each item
    axes:     (n, 2, 3) float64, u and v (3-D frequency of a unit step along 2-D x and y, in s3 voxels)
    x_ranges: (fc, s2) int64, one past the last x per frame and row (``Tomogram::findDoseXRanges``)
    size:     s3, the 3-D box
    Returns (data (n_particles, s3, s3, s3//2+1) complex64, ctf_mult (n_particles, 2·s3, s3, s3//2+1)
    float32): ctf_mult[:, :s3] is the CTF² volume and ctf_mult[:, s3:] the multiplicity, so that
    ctf_mult[p] is exactly RELION's ``_weights.mrc`` layout. All in FFTW half layout.

    workspace: optional :class:`InsertionWorkspace` whose buffers are reused (the returned arrays are then
    views into it, valid until its next use): avoids mapping and zero-filling fresh memory for every batch.
    """
    n_particles = len(starts)
    if spectra.shape != weights.shape or spectra.ndim != 3 or spectra.shape[1] // 2 + 1 != spectra.shape[2]:
        raise RelionPyError(f"insert_slices_forward: bad spectra/weights shapes {spectra.shape}, {weights.shape}")
    if x_ranges.shape[1] != spectra.shape[1] or x_ranges.max(initial=0) > spectra.shape[2]:
        raise RelionPyError("insert_slices_forward: x ranges do not fit the spectra")
    if workspace is None:
        workspace = InsertionWorkspace(n_particles, size)
    data, ctf_mult, acc = workspace.views(n_particles, size)
    if n_particles:
        # one interleaved accumulator (data re, im, CTF², multiplicity): one cache line per voxel update
        acc.fill(0)
        _insert_slices_forward(np.ascontiguousarray(spectra, np.complex64), np.ascontiguousarray(weights, np.float32),
                               np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(counts, np.int64),
                               np.ascontiguousarray(frames, np.int64), np.ascontiguousarray(axes, np.float64),
                               np.ascontiguousarray(x_ranges, np.int64), bool(centred_source), acc)
        _unpack(acc, np.float32(scale), bool(decentre), data.view(np.float32), ctf_mult)
    return data, ctf_mult


class InsertionWorkspace:
    """Buffers of :func:`insert_slices_forward` for up to ``capacity`` particles of box ``size``; ``data``
    optionally gives the (capacity, size, size, size//2+1) complex64 array the data volumes go to (e.g. the
    input buffer of the inverse FFT that follows)."""

    def __init__(self, capacity, size, data=None):
        sh3 = size // 2 + 1
        self.size = size
        if data is None:
            data = np.empty((capacity, size, size, sh3), np.complex64)
        if data.shape != (capacity, size, size, sh3) or data.dtype != np.complex64:
            raise ValueError(f"InsertionWorkspace: data must be a {(capacity, size, size, sh3)} complex64 array")
        self.data = data
        self.ctf_mult = np.empty((capacity, 2 * size, size, sh3), np.float32)
        self.acc = np.empty((capacity, size, size, sh3, 4), np.float32)

    def views(self, n, size):
        if size != self.size or n > len(self.acc):
            raise RelionPyError(f"insertion workspace holds {len(self.acc)} particles of {self.size}^3, "
                                f"not {n} of {size}^3")
        return self.data[:n], self.ctf_mult[:n], self.acc[:n]
