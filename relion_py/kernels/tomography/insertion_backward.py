"""Backward ("gather") insertion of 2-D central slices into unpadded 3-D half-complex Fourier volumes:
the Fourier backprojection of relion_tomo_reconstruct_particle.

Mirrors ``FourierBackprojection::backprojectSlice_backward(maxFreq, ...)``
(src/jaz/tomography/projection/Fourier_backprojection.h) with the 2-D interpolators
``Interpolation::linearXY_complex_FftwHalf_clip`` / ``linearXY_symmetric_FftwHalf_clip``
(src/jaz/image/interpolation.h). See docs/reconstruction.md, part A.

Every 3-D voxel k = (x, y, z) of the half grid (x ≥ 0, signed y, z with the Nyquist index negative)
with |k|² ≤ R² pulls one bilinear sample of the 2-D slice at (u, v, w) = Q·k, Q = (M⁻¹)ᵀ, if
-1 < w < 1, |u| < s2/2+1 and |v| < s2/2+1, weighted by the triangle c = 1 - |w| across the slice.

The voxels visited are RELION's (its x range per (z, y) row, then its per-voxel test), but rows that
cannot meet the slab are skipped. The work is organised for memory: the accumulators are swept a few z
planes at a time for all slices of a batch (cache blocking), data and weight are interleaved in one
float64 array (one cache line per voxel), and each slice's hits are first listed (indices, fractions,
slab weight) and then gathered with software prefetching a few hits ahead — the random reads of the
2-D slices, not the arithmetic, bound the speed. Within one slice every voxel is written once, so none
of this changes the sums. Interpolation is done in double (RELION: float32 intermediates; the
difference is below 1e-7 relative).
"""
import math

import numpy as np

from ...runtime.errors import RelionPyError
from .._jit import njit
from ..prefetch import prefetch as _prefetch

#: Hits listed before they are gathered, and how many hits ahead their memory is prefetched. Measured on the bench
#: project (per particle, one thread, 2026-12-07): 256 hits 5 % slower, 2048 no faster; prefetching 32 hits
#: ahead 3 % faster on this kernel (not measurable in whole runs), 64 no better; without prefetching the
#: accumulator 50 % slower, prefetching only it or only every other hit 5–30 % slower. Of ~9.5 ms per particle,
#: the rows' x ranges take ~1 ms, listing the ~500 000 hits ~3.4 ms and gathering them ~5 ms. No faster: the
#: slices' data and weight interleaved (one cache line fewer per sample), a reciprocal instead of the two
#: divisions per row (with RELION's division where they could round apart), 512 hits.
HIT_BUFFER = 1024
PREFETCH_AHEAD = 16


@njit(inline="always")
def _isqrt(n):
    """floor(sqrt(n)) for an integer n ≥ 0 (exact: sqrt is correctly rounded)."""
    return int(math.sqrt(n))


@njit(inline="always")
def _range_of(n_a, t_lo, t_hi, a_lo, a_hi):
    """Integer a in [a_lo, a_hi] for which |n_a·a + t| < 1 is possible for some t in [t_lo, t_hi]
    (widened by one on each side; empty if a_lo > a_hi)."""
    if n_a == 0.0:
        if t_lo < 1.0 and t_hi > -1.0:
            return a_lo, a_hi
        return a_lo, a_lo - 1
    a0 = (-1.0 - t_hi) / n_a
    a1 = (1.0 - t_lo) / n_a
    if a0 > a1:
        a0, a1 = a1, a0
    return max(a_lo, int(math.ceil(a0)) - 1), min(a_hi, int(math.floor(a1)) + 1)


@njit
def _gather(n, hit_acc, hit_g0, hit_g1, hit_dx, hit_fx, hit_fy, hit_c, hit_cs, g, v, acc):
    """Interpolate the listed hits and add them to the accumulator (prefetching PREFETCH_AHEAD hits ahead)."""
    for j in range(n):
        ahead = j + PREFETCH_AHEAD
        if ahead < n:
            _prefetch(g, hit_g0[ahead])
            _prefetch(g, hit_g1[ahead])
            _prefetch(v, hit_g0[ahead])
            _prefetch(v, hit_g1[ahead])
            _prefetch(acc, hit_acc[ahead])
        i00 = hit_g0[j]
        i10 = hit_g1[j]
        dx = hit_dx[j]
        i01 = i00 + dx
        i11 = i10 + dx
        fx = hit_fx[j]
        fy = hit_fy[j]
        a00 = g[i00]
        a01 = g[i01]
        a10 = g[i10]
        a11 = g[i11]
        gx = 1.0 - fx
        gy = 1.0 - fy
        w00 = gy * gx
        w01 = gy * fx
        w10 = fy * gx
        w11 = fy * fx
        re = w00 * a00.real + w01 * a01.real + w10 * a10.real + w11 * a11.real
        im = w00 * a00.imag + w01 * a01.imag + w10 * a10.imag + w11 * a11.imag
        wv = w00 * v[i00] + w01 * v[i01] + w10 * v[i10] + w11 * v[i11]
        k = hit_acc[j]
        c = hit_c[j]
        acc[k] += c * re
        acc[k + 1] += hit_cs[j] * im       # c·sign: the Friedel mate is conjugated
        acc[k + 2] += c * wv


@njit
def _insert_slice(g, v, g_off, s2, sh2, q, rmax, acc, s3, zlo, zhi, isqrt, hit_acc, hit_g0, hit_g1, hit_dx,
                  hit_fx, hit_fy, hit_c, hit_cs):
    """All voxels of one slice with signed z in [zlo, zhi]: z, then y, then contiguous x. The z and y
    ranges are narrowed (generously) to rows that can meet the slab inside the sphere |k| ≤ R; the x range
    of a row is RELION's: ceil/floor of (-yz ∓ 1)/n.x clipped to [0, min(s/2, trunc(sqrt(R² - y² - z²)))].

    g, v: the slices, flattened (this one starts at g_off, rows of sh2); acc: one accumulator, flattened
    [z, y, x, 3]."""
    sh3 = s3 // 2 + 1
    half3 = s3 // 2
    vlim = s2 // 2 + 1
    fs2 = float(s2)
    r2 = rmax * rmax
    xmax = min(sh3 - 1, rmax)
    ymin = max(-half3, -rmax)
    ymax = min(half3 - 1, rmax)
    q00, q01, q02 = q[0, 0], q[0, 1], q[0, 2]
    q10, q11, q12 = q[1, 0], q[1, 1], q[1, 2]
    nx, ny, nz = q[2, 0], q[2, 1], q[2, 2]
    # |u| ≤ |Q row 0|·|k|, |v| ≤ |Q row 1|·|k|: RELION's |u| < s2/2+1, |v| < s2/2+1 tests can only fail if
    # the slice is scaled up (tomograms of different pixel sizes) or R = s/2+1; otherwise they are skipped
    norm_u = math.sqrt(q00 * q00 + q01 * q01 + q02 * q02) * rmax
    norm_v = math.sqrt(q10 * q10 + q11 * q11 + q12 * q12) * rmax
    check = not (norm_u < 0.999 * sh2 and norm_v < 0.999 * vlim)
    tx_lo = min(0.0, nx * xmax)
    tx_hi = max(0.0, nx * xmax)
    z0, z1 = _range_of(nz, tx_lo + min(ny * ymin, ny * ymax), tx_hi + max(ny * ymin, ny * ymax),
                       max(max(-half3, -rmax), zlo), min(min(half3 - 1, rmax), zhi))
    cap = hit_acc.shape[0]
    n = 0
    for z in range(z0, z1 + 1):
        rz = r2 - z * z
        yl = isqrt[rz]
        xz = min(xmax, yl)
        zf = float(z)
        tz = nz * zf
        zi = z + s3 if z < 0 else z
        y0, y1 = _range_of(ny, tz + min(0.0, nx * xz), tz + max(0.0, nx * xz), max(ymin, -yl), min(ymax, yl))
        for y in range(y0, y1 + 1):
            yf = float(y)
            yz = ny * yf + nz * zf
            x_hi = min(xmax, isqrt[rz - y * y])
            if nx == 0.0:
                if not (yz > -1.0 and yz < 1.0):
                    continue
                x_lo = 0
            else:
                a0 = (-yz - 1.0) / nx
                a1 = (-yz + 1.0) / nx
                if a0 > a1:
                    a0, a1 = a1, a0
                x_lo = max(0, int(math.ceil(a0)))
                x_hi = min(x_hi, int(math.floor(a1)))
            if n + (x_hi - x_lo + 1) > cap:
                _gather(n, hit_acc, hit_g0, hit_g1, hit_dx, hit_fx, hit_fy, hit_c, hit_cs, g, v, acc)
                n = 0
            bu = q01 * yf + q02 * zf
            bv = q11 * yf + q12 * zf
            yi = y + s3 if y < 0 else y
            row = (zi * s3 + yi) * sh3 * 3
            for x in range(x_lo, x_hi + 1):
                xf = float(x)
                pw = nx * xf + yz
                if not (pw > -1.0 and pw < 1.0):
                    continue
                pu = q00 * xf + bu
                pv = q10 * xf + bv
                if check and not (abs(pu) < sh2 and abs(pv) < vlim):
                    continue
                c = 1.0 - abs(pw)
                # linearXY_*_FftwHalf_clip: Friedel mate for u < 0, x1 reflected at the last column,
                # y periodic
                sg = 1.0 if pu >= 0.0 else -1.0
                xd = sg * pu
                yd = sg * pv
                yd = yd + fs2 if yd < 0.0 else yd
                ix0 = int(xd)
                iy0 = int(yd)
                hit_fx[n] = xd - ix0
                hit_fy[n] = yd - iy0
                if ix0 >= sh2:
                    ix0 = sh2 - 1
                hit_dx[n] = 1 if ix0 + 1 < sh2 else -1
                if iy0 >= s2:
                    iy0 = s2 - 1
                hit_g0[n] = g_off + iy0 * sh2 + ix0
                hit_g1[n] = g_off + ((iy0 + 1) * sh2 if iy0 + 1 < s2 else 0) + ix0
                hit_acc[n] = row + 3 * x
                hit_c[n] = c
                hit_cs[n] = c * sg
                n += 1
    _gather(n, hit_acc, hit_g0, hit_g1, hit_dx, hit_fx, hit_fy, hit_c, hit_cs, g, v, acc)


@njit
def _insert_slices_backward(spectra, weights, q, radii, halves, starts, block, acc):
    n_acc, n_half, s3 = acc.shape[0], acc.shape[1], acc.shape[2]
    m, s2, sh2 = spectra.shape
    half3 = s3 // 2
    g = spectra.reshape(-1)
    v = weights.reshape(-1)
    r_top = 0
    for i in range(radii.shape[0]):
        r_top = max(r_top, radii[i])
    isqrt = np.empty(r_top * r_top + 1, np.int64)          # trunc(sqrt(n)) for every n ≤ R²
    for k in range(isqrt.shape[0]):
        isqrt[k] = _isqrt(k)
    cap = max(HIT_BUFFER, s3 // 2 + 1)            # at least one row
    hit_acc = np.empty(cap, np.int64)
    hit_g0 = np.empty(cap, np.int64)
    hit_g1 = np.empty(cap, np.int64)
    hit_dx = np.empty(cap, np.int64)
    hit_fx = np.empty(cap)
    hit_fy = np.empty(cap)
    hit_c = np.empty(cap)
    hit_cs = np.empty(cap)
    for a in range(n_acc):
        flat = acc[a].reshape(n_half, -1)
        for zb in range(-half3, half3, block):       # cache blocking: a few z planes at a time
            for i in range(starts[a], starts[a + 1]):
                _insert_slice(g, v, i * s2 * sh2, s2, sh2, q[i], radii[i], flat[halves[i]], s3, zb,
                              min(half3 - 1, zb + block - 1), isqrt, hit_acc, hit_g0, hit_g1, hit_dx, hit_fx,
                              hit_fy, hit_c, hit_cs)


#: Bytes of accumulator planes kept hot while all slices of a call pass over them (256 KiB: 9 % slower; 512 KiB
#: and 2 MiB: no faster, measured as above).
BLOCK_BYTES = 1 << 20


def insert_slices_backward(acc, spectra, spectra_weights, slice_q, radii, halves, starts):
    """Backproject 2-D slices into private accumulators, adding in place (serially: callers give each
    thread its own accumulators).

    acc:     (A, H, s, s, s//2+1, 3) float64 accumulators, [z, y, x, (Re D, Im D, W)]: A private copies,
             H half sets; D = Σ c·G(u, v), W = Σ c·V(u, v)
    spectra: (m, s, s//2+1) complex64 weighted 2-D slices G (origin at index 0, Nyquist row negative)
    spectra_weights: (m, s, s//2+1) float32 their weights V (CTF² · dose²)
    slice_q: (m, 3, 3) float64, Q = (M⁻¹)ᵀ of each slice (see :func:`slice_matrices`)
    radii:   (m,) int64, 3-D radius limit R (px) of each slice (|k|² ≤ R²)
    halves:  (m,) int64 in [0, H), half set of each slice
    starts:  (A+1,) int64: slices starts[a]..starts[a+1]-1 go into accumulator a
    """
    if acc.ndim != 6 or acc.shape[-1] != 3 or acc.dtype != np.float64 or not acc.flags.c_contiguous:
        raise ValueError("insert_slices_backward: acc must be a C-contiguous (A,H,s,s,sh,3) float64 array")
    n_acc, n_half, s, s_y, sh, _ = acc.shape
    if s != s_y or sh != s // 2 + 1:
        raise ValueError(f"insert_slices_backward: accumulator shape {acc.shape} is not a half grid")
    m = spectra.shape[0]
    if spectra.shape[1:] != spectra_weights.shape[1:] or spectra_weights.shape[0] != m or spectra.ndim != 3:
        raise ValueError(f"insert_slices_backward: slices {spectra.shape} / weights {spectra_weights.shape}")
    if (slice_q.shape != (m, 3, 3) or radii.shape != (m,) or halves.shape != (m,)
            or starts.shape != (n_acc + 1,)):
        raise ValueError("insert_slices_backward: per-slice arrays have inconsistent shapes")
    if m and (halves.min() < 0 or halves.max() >= n_half):
        raise RelionPyError("half-set index out of range")
    if m == 0:
        return acc
    block = max(1, BLOCK_BYTES // (s * sh * 24))
    _insert_slices_backward(np.ascontiguousarray(spectra, np.complex64),
                            np.ascontiguousarray(spectra_weights, np.float32),
                            np.ascontiguousarray(slice_q, np.float64), np.ascontiguousarray(radii, np.int64),
                            np.ascontiguousarray(halves, np.int64), np.ascontiguousarray(starts, np.int64),
                            block, acc)
    return acc


def slice_matrices(m):
    """Q = (M⁻¹)ᵀ of 3x3 matrices (n, 3, 3), inverted as ``gravis::t3Matrix::invert``: adjugate / det."""
    m = np.asarray(m, dtype=np.float64)
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    g, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    cof = np.empty_like(m)          # cofactor matrix = adjugate transposed = (M⁻¹)ᵀ · det
    cof[:, 0, 0] = e * i - f * h
    cof[:, 0, 1] = f * g - d * i
    cof[:, 0, 2] = d * h - e * g
    cof[:, 1, 0] = c * h - b * i
    cof[:, 1, 1] = a * i - c * g
    cof[:, 1, 2] = b * g - a * h
    cof[:, 2, 0] = b * f - c * e
    cof[:, 2, 1] = c * d - a * f
    cof[:, 2, 2] = a * e - b * d
    det = a * cof[:, 0, 0] + b * cof[:, 0, 1] + c * cof[:, 0, 2]
    if np.any(det == 0):
        raise RelionPyError("singular projection matrix")
    return cof * (1.0 / det)[:, None, None]
