"""RELION's classic Fourier-space reconstruction (``BackProjector``, src/backprojector.cpp), the engine of
``relion_reconstruct``: insertion of 2-D image transforms and 3-D subtomogram transforms into an
oversampled Fourier grid, Hermitian and point-group / helical symmetrisation, the weight division of
``BackProjector::reconstruct`` and the real-space finishing steps of ``windowToOridimRealSpace`` and
``Projector::griddingCorrect``.

All arithmetic is float64 and follows RELION's evaluation order where it decides which voxels are filled
(see the spec, part B). FFTs are done by the callers (``relion_py.programs.reconstruct_images``).

The padded grid (``data`` complex128 and ``weight`` float64) has shape ``(pad, pad, P + 2)`` in (z, y, x)
order, ``pad = 2 (P + 1) + 1`` and ``P = round(pf · r_max)``. Logical (signed) z and y run over
``-(P + 1) .. P + 1`` and sit at array index ``logical + P + 1``; x runs over ``0 .. P + 1``. Only the
x >= 0 half is stored (Hermitian symmetry). While particles are inserted, data and weight live interleaved
in one *accumulator* ``acc`` of shape ``(pad, pad, P + 2, 3)`` float64 (real, imaginary, weight): a splat
then touches half as many cache lines (the insertion is memory-bound). ``split_accumulator`` turns it into
the (data, weight) pair used by the later steps.
"""
import math

import numba
import numpy as np

from ...runtime.errors import RelionPyError
from .._jit import njit
from ..ctf import clamp_ctf, ctf_gamma

PI = 3.14159265358979323846


# --------------------------------------------------------------------------------------------------------
# Small scalar helpers with RELION's integer conversions (macros.h)
# --------------------------------------------------------------------------------------------------------

@njit(inline="always")
def _round(x):
    """RELION ``ROUND``: half away from zero, then truncation (``(int)(x ± 0.5)``)."""
    if x > 0.0:
        return int(x + 0.5)
    return int(x - 0.5)


@njit(inline="always")
def _floor(x):
    return int(math.floor(x))


@njit(inline="always")
def _ceil(x):
    return int(math.ceil(x))


def relion_round(x):
    """Python twin of ``ROUND`` for set-up scalars."""
    return int(x + 0.5) if x > 0 else int(x - 0.5)


def inverse_3x3(a):
    """Inverse of a 3x3 matrix by cofactors, RELION's ``Matrix2D::inv`` for 3x3 (src/matrix2d.h).

    The evaluation order decides, for pixels exactly on the insertion radius, whether they are inserted
    (spec §B.4), so it is reproduced literally. a: (3, 3) float64. Returns (3, 3) float64.
    """
    a = np.asarray(a, dtype=np.float64)
    c = np.empty((3, 3))
    c[0, 0] = a[2, 2] * a[1, 1] - a[2, 1] * a[1, 2]
    c[0, 1] = -(a[2, 2] * a[0, 1] - a[2, 1] * a[0, 2])
    c[0, 2] = a[1, 2] * a[0, 1] - a[1, 1] * a[0, 2]
    c[1, 0] = -(a[2, 2] * a[1, 0] - a[2, 0] * a[1, 2])
    c[1, 1] = a[2, 2] * a[0, 0] - a[2, 0] * a[0, 2]
    c[1, 2] = -(a[1, 2] * a[0, 0] - a[1, 0] * a[0, 2])
    c[2, 0] = a[2, 1] * a[1, 0] - a[2, 0] * a[1, 1]
    c[2, 1] = -(a[2, 1] * a[0, 0] - a[2, 0] * a[0, 1])
    c[2, 2] = a[1, 1] * a[0, 0] - a[1, 0] * a[0, 1]
    det = a[0, 0] * c[0, 0] + a[1, 0] * c[0, 1] + a[2, 0] * c[0, 2]
    return c / det


# --------------------------------------------------------------------------------------------------------
# Per-particle preparation of the Fourier transform
# --------------------------------------------------------------------------------------------------------

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
                dotp = 2 * PI * (x * xs + y * ys + z * zs)
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


@njit
def _ctf_image(out, n, angpix, k1, k2, k3, k4, k5, axx, axy, ayy, scale, do_abs, flip, intact_first_peak):
    ny, nx = out.shape
    xs = float(n) * angpix
    ys = float(n) * angpix
    for i in range(ny):
        ip = i if i < nx else i - ny
        y = float(ip) / ys
        for j in range(nx):
            x = float(j) / xs
            gamma = ctf_gamma(x, y, k1, k2, k3, k5, axx, axy, ayy, 0.0)
            if intact_first_peak and abs(gamma) < PI / 2.0:
                v = 1.0
            else:
                v = -math.sin(gamma)
            v *= math.exp(k4 * (x * x + y * y))
            if do_abs:
                v = abs(v)
            elif flip:
                v = -1.0 if v < 0.0 else 1.0
            v *= scale
            out[i, j] = clamp_ctf(v)


def ctf_image(n, angpix, consts, astig, scale, do_abs=False, only_flip_phases=False, intact_first_peak=False):
    """The CTF on the half grid of an n x n image (``CTF::getFftwImage`` without CTF padding, src/ctf.cpp).

    Frequencies ``X = x / (n·angpix)``, ``Y = ip / (n·angpix)`` with the xmipp Nyquist convention (row n/2
    positive); damping on; ``do_abs`` (--ctf_phase_flipped) → |CTF|, else ``only_flip_phases`` → ±1; then
    × scale and RELION's ±1e-8 clamp. consts: (K1..K5) of ``ctf_constants``; astig: (Axx, Axy, Ayy).
    Returns (n, n//2+1) float64.
    """
    out = np.empty((n, n // 2 + 1))
    k1, k2, k3, k4, k5 = (float(v) for v in consts)
    axx, axy, ayy = (float(v) for v in astig)
    _ctf_image(out, int(n), float(angpix), k1, k2, k3, k4, k5, axx, axy, ayy, float(scale),
               bool(do_abs), bool(only_flip_phases), bool(intact_first_peak))
    return out


# --------------------------------------------------------------------------------------------------------
# Insertion
# --------------------------------------------------------------------------------------------------------

@njit(inline="always")
def _splat(acc, z0, y0, x0, fx, fy, fz, vr, vi, wt):
    mfx = 1. - fx
    mfy = 1. - fy
    mfz = 1. - fz
    for dz in range(2):
        wz = fz if dz else mfz
        for dy in range(2):
            wzy = wz * (fy if dy else mfy)      # dd_abc = (wz · wy) · wx, RELION's grouping
            row = acc[z0 + dz, y0 + dy]
            d0 = wzy * mfx
            d1 = wzy * fx
            row[x0, 0] += d0 * vr
            row[x0, 1] += d0 * vi
            row[x0, 2] += d0 * wt
            row[x0 + 1, 0] += d1 * vr
            row[x0 + 1, 1] += d1 * vi
            row[x0 + 1, 2] += d1 * wt


@njit(inline="always")
def _add_entry(acc, off, xp, yp, zp, vr, vi, wt, mode):
    """Add one resolved entry: mode 1 = trilinear splat at (xp, yp, zp) (x >= 0 half), mode 2 = nearest
    neighbour at the integer logical voxel (xp, yp, zp)."""
    if mode == 1:
        x0 = _floor(xp)
        y0 = _floor(yp)
        z0 = _floor(zp)
        _splat(acc, z0 + off, y0 + off, x0, xp - x0, yp - y0, zp - z0, vr, vi, wt)
    else:
        x0 = int(xp)
        y0 = int(yp) + off
        z0 = int(zp) + off
        acc[z0, y0, x0, 0] += vr
        acc[z0, y0, x0, 1] += vi
        acc[z0, y0, x0, 2] += wt


@njit(inline="always")
def _resolve(xp, yp, zp, vi, nn, xdim, ydim, zdim, off, border_test):
    """Where an inserted sample goes (``backproject2Dto3D`` / ``backrotate3D``): the Friedel flip to the
    stored x >= 0 half, trilinear (mode 1) or nearest neighbour (mode 2, ROUND of each coordinate, flip when
    the rounded x < 0); mode 0 when ``border_test`` (2-D insertion) finds the splat touching the border.
    Returns (mode, x, y, z, imaginary part)."""
    if not nn:
        if xp < 0.0:
            xp = -xp
            yp = -yp
            zp = -zp
            vi = -vi
        if border_test:
            x0 = _floor(xp)
            y0 = _floor(yp) + off
            z0 = _floor(zp) + off
            if x0 < 0 or x0 + 1 >= xdim or y0 < 0 or y0 + 1 >= ydim or z0 < 0 or z0 + 1 >= zdim:
                return 0, xp, yp, zp, vi
        return 1, xp, yp, zp, vi
    x0 = _round(xp)
    y0 = _round(yp)
    z0 = _round(zp)
    if x0 < 0:
        x0 = -x0
        y0 = -y0
        z0 = -z0
        vi = -vi
    if border_test and (x0 < 0 or x0 >= xdim or y0 + off < 0 or y0 + off >= ydim or z0 + off < 0
                        or z0 + off >= zdim):
        return 0, 0.0, 0.0, 0.0, vi
    return 2, float(x0), float(y0), float(z0), vi


@njit(inline="always")
def _slab_of(mode, zp, off, slab_h):
    """Slab (of ``slab_h`` destination z planes) of a resolved entry: that of its lowest z plane."""
    if mode == 1:
        return (_floor(zp) + off) // slab_h
    return (int(zp) + off) // slab_h


@njit(inline="always")
def _emit(acc, off, xp, yp, zp, vr, vi, wt, mode, task, slab_h, counts, starts, entries):
    """One insertion of a walk: task 0 adds it to ``acc`` now; task 1 counts it in its slab; task 2 stores
    it as an entry of its slab (the weight's sign marks nearest-neighbour entries; weights are > 0)."""
    if task == 0:
        _add_entry(acc, off, xp, yp, zp, vr, vi, wt, mode)
        return
    slab = _slab_of(mode, zp, off, slab_h)
    if task == 1:
        counts[slab] += 1
        return
    e = entries[starts[slab]]
    starts[slab] += 1
    e[0] = xp
    e[1] = yp
    e[2] = zp
    e[3] = vr
    e[4] = vi
    e[5] = wt if mode == 1 else -wt


@njit
def _walk_2d(acc, f2d, fctf, ainv, max_r2, min_r2_nn, nn, center_sign, zero_dc, grid_shape, slab_h, counts,
             starts, entries, task):
    """The pixel loop of ``BackProjector::backproject2Dto3D`` (identity magnification, no Ewald sphere).
    task 0: insert into acc; 1: count entries per slab; 2: write entries (sorted by slab) from ``starts``."""
    s = f2d.shape[0]
    sh = f2d.shape[1]
    zdim, ydim, xdim = grid_shape[0], grid_shape[1], grid_shape[2]
    off = (ydim - 1) // 2
    a00, a01, a02 = ainv[0, 0], ainv[0, 1], ainv[0, 2]
    a10, a11, a12 = ainv[1, 0], ainv[1, 1], ainv[1, 2]
    a20, a21, a22 = ainv[2, 0], ainv[2, 1], ainv[2, 2]
    # (Am)^t Am of the 2-D part (magnification matrix = identity)
    ata_xx = a00 * a00 + a10 * a10 + a20 * a20
    ata_xy = a00 * a01 + a10 * a11 + a20 * a21
    ata_yy = a01 * a01 + a11 * a11 + a21 * a21
    ata_xy2 = ata_xy * ata_xy
    r2max = float(max_r2)
    for i in range(s):
        if i < sh:
            y = i
            first_allowed_x = 0
        else:
            y = i - s
            first_allowed_x = 1            # the x = 0 column of negative rows is the Hermitian duplicate
        yf = float(y)
        discr = ata_xy2 * yf * yf - ata_xx * (ata_yy * yf * yf - r2max)
        if discr < 0.0:
            continue
        d = math.sqrt(discr) / ata_xx
        q = -ata_xy * yf / ata_xx
        first_x = _ceil(q - d)
        last_x = _floor(q + d)
        if first_x < first_allowed_x:
            first_x = first_allowed_x
        if last_x > sh - 1:
            last_x = sh - 1
        for x in range(first_x, last_x + 1):
            wt = fctf[i, x]
            if wt <= 0.0:
                continue
            xf = float(x)
            xp = a00 * xf + a01 * yf + a02 * 0.0
            yp = a10 * xf + a11 * yf + a12 * 0.0
            zp = a20 * xf + a21 * yf + a22 * 0.0
            r2 = xp * xp + yp * yp + zp * zp
            if r2 > r2max:
                continue
            v = f2d[i, x]
            vr = v.real
            vi = v.imag
            if center_sign and (i + x) % 2 == 1:
                vr = -vr
                vi = -vi
            if zero_dc and i == 0 and x == 0:
                vr = 0.0
                vi = 0.0
            use_nn = nn and not r2 < min_r2_nn
            mode, xp, yp, zp, vi = _resolve(xp, yp, zp, vi, use_nn, xdim, ydim, zdim, off, True)
            if mode == 0:
                continue
            _emit(acc, off, xp, yp, zp, vr, vi, wt, mode, task, slab_h, counts, starts, entries)


@njit
def _walk_3d(acc, f3d, fctf, ainv, r_max_ref_2, r_min_nn_ref_2, nn, center_sign, zero_dc, grid_shape, slab_h,
             counts, starts, entries, task):
    """The voxel loop of ``BackProjector::backrotate3D``; tasks as in ``_walk_2d``."""
    nz, ny, nx = f3d.shape
    off = (grid_shape[1] - 1) // 2
    r_max_src = nx - 1
    r_max_src_2 = r_max_src * r_max_src
    a00, a01, a02 = ainv[0, 0], ainv[0, 1], ainv[0, 2]
    a10, a11, a12 = ainv[1, 0], ainv[1, 1], ainv[1, 2]
    a20, a21, a22 = ainv[2, 0], ainv[2, 1], ainv[2, 2]
    for k in range(nz):
        if k <= r_max_src:
            z = k
            x_min = 0
        else:
            z = k - nz
            x_min = 1                       # the x = 0 plane of negative z is the Hermitian duplicate
        z2 = z * z
        for i in range(ny):
            y = i if i <= r_max_src else i - ny
            yz2 = float(y * y + z2)
            if yz2 > r_max_src_2:
                continue
            x_max = _floor(math.sqrt(r_max_src_2 - yz2))
            yf = float(y)
            zf = float(z)
            for x in range(x_min, x_max + 1):
                xf = float(x)
                xp = a00 * xf + a01 * yf + a02 * zf
                yp = a10 * xf + a11 * yf + a12 * zf
                zp = a20 * xf + a21 * yf + a22 * zf
                r_ref_2 = int(xp * xp + yp * yp + zp * zp)
                if r_ref_2 > r_max_ref_2:
                    continue
                wt = fctf[k, i, x]
                if wt <= 0.0:
                    continue
                v = f3d[k, i, x]
                vr = v.real
                vi = v.imag
                if center_sign and (k + i + x) % 2 == 1:
                    vr = -vr
                    vi = -vi
                if zero_dc and k == 0 and i == 0 and x == 0:
                    vr = 0.0
                    vi = 0.0
                use_nn = nn and not r_ref_2 < r_min_nn_ref_2
                mode, xp, yp, zp, vi = _resolve(xp, yp, zp, vi, use_nn, 0, 0, 0, off, False)
                _emit(acc, off, xp, yp, zp, vr, vi, wt, mode, task, slab_h, counts, starts, entries)


_NO_I = np.zeros(1, np.int64)
_NO_E = np.zeros((1, 6))
_NO_ACC = np.zeros((1, 1, 1, 3))


def new_accumulator(pad):
    """A zeroed insertion accumulator (pad, pad, pad//2+1, 3) float64: real, imaginary, weight."""
    return np.zeros((pad, pad, pad // 2 + 1, 3))


def split_accumulator(acc):
    """(data complex128, weight float64), both (pad, pad, pad//2+1), of an insertion accumulator."""
    data = np.empty(acc.shape[:3], np.complex128)
    data.real = acc[..., 0]
    data.imag = acc[..., 1]
    return data, np.ascontiguousarray(acc[..., 2])


def backproject_2d_to_3d(acc, f2d, fctf, ainv, max_r2, min_r2_nn, nn=False, center_sign=False,
                         zero_dc=False):
    """Insert one 2-D image transform as a central slice into the padded 3-D grid (adds in place).

    Mirrors ``BackProjector::backproject2Dto3D`` (src/backprojector.cpp) without Ewald curvature or
    magnification matrix: for every half-grid pixel inside the ellipse that maps onto the sphere of
    radius sqrt(max_r2), trilinear splat of value and weight at ``ainv · (x, y, 0)``; splats touching the
    array border are dropped; pixels with weight <= 0 are skipped; with ``nn`` beyond ``min_r2_nn`` a
    nearest-neighbour insertion.

    acc:    (pad, pad, P+2, 3) float64 insertion accumulator (see module doc), added to in place
    f2d:    (n, n//2+1) complex128 image transform (RELION normalisation, origin at index 0)
    fctf:   (n, n//2+1) float64 weight of each pixel (CTF², or 1)
    ainv:   (3, 3) float64, pf · A⁻¹ (A = Euler matrix, ``inverse_3x3``)
    max_r2, min_r2_nn: ints, ROUND(pf·r_max)² and ROUND(pf·r_min_nn)² (padded px²)
    center_sign: apply ``CenterFFTbySign`` to f2d on the fly (× (-1)^(y+x) by array index)
    zero_dc: insert a zero value (weight kept) at the DC pixel, as ``backprojectOneParticle`` does
    """
    _check_accumulator(acc)
    if f2d.shape != fctf.shape or f2d.ndim != 2:
        raise ValueError("backproject_2d_to_3d: f2d and fctf must have the same 2-D shape")
    _walk_2d(acc, f2d, fctf, np.ascontiguousarray(ainv, np.float64), int(max_r2), float(min_r2_nn), bool(nn),
             bool(center_sign), bool(zero_dc), np.array(acc.shape[:3], np.int64), 1, _NO_I, _NO_I, _NO_E, 0)


def backrotate_3d(acc, f3d, fctf, ainv, r_max_ref_2, r_min_nn_ref_2, nn=False, center_sign=False,
                  zero_dc=False):
    """Insert one rotated 3-D subtomogram transform into the padded 3-D grid (adds in place).

    Mirrors ``BackProjector::backrotate3D`` (src/backprojector.cpp): source voxels within radius n/2
    (x = 0 skipped on negative-z planes), destination ``ainv · (x, y, z)`` kept if the *truncated*
    squared radius is <= ``r_max_ref_2``, weight <= 0 skipped, trilinear splat without border test (or
    nearest neighbour beyond ``r_min_nn_ref_2`` with ``nn``).

    acc:  insertion accumulator as in ``backproject_2d_to_3d``
    f3d:  (n, n, n//2+1) complex128 subtomogram transform; fctf: same shape, float64 or float32 weights
    ainv: (3, 3) float64, pf · A⁻¹
    r_max_ref_2, r_min_nn_ref_2: ints, (int)(r_max·pf)² and (int)(r_min_nn²·pf²)
    """
    _check_accumulator(acc)
    _check_3d(acc.shape[0], f3d, fctf, r_max_ref_2)
    _walk_3d(acc, f3d, fctf, np.ascontiguousarray(ainv, np.float64), int(r_max_ref_2), int(r_min_nn_ref_2),
             bool(nn), bool(center_sign), bool(zero_dc), np.array(acc.shape[:3], np.int64), 1, _NO_I, _NO_I,
             _NO_E, 0)


def _check_3d(pad, f3d, fctf, r_max_ref_2):
    if f3d.shape != fctf.shape or f3d.ndim != 3:
        raise ValueError("backrotate_3d: f3d and fctf must have the same 3-D shape")
    p = (pad - 1) // 2 - 1
    if r_max_ref_2 > p * p:                 # keeps every splat inside the grid (RELION does not test)
        raise ValueError("backrotate_3d: r_max_ref_2 exceeds the padded grid")


class SlabEntries:
    """Insertion of many images at once, with the padded grid visited slab by slab (memory-bound otherwise).

    Each image is first *resolved* (``count_*`` then ``reserve`` then ``fill_*``: the exact pixel/voxel loop
    of ``backproject2Dto3D`` / ``backrotate3D``) into entries (x, y, z, re, im, ±weight) sorted by the
    destination slab of ``slab_h`` z planes; ``insert`` then adds all entries of all images slab by slab
    (even slabs in parallel, then odd ones: a splat reaches one plane into the next slab), so that the
    destination planes stay in cache while every image passes. The sum per voxel equals the image-by-image
    insertion up to the order of the additions, which is fixed (it does not depend on the thread count).
    """

    def __init__(self, grid_shape, slab_h, capacity):
        """grid_shape: (pad, pad, pad//2+1); slab_h: z planes per slab; capacity: entries (48 bytes each)."""
        self.grid_shape = np.array(grid_shape, np.int64)
        self.slab_h = int(slab_h)
        self.n_slabs = -(-int(grid_shape[0]) // self.slab_h)
        self.entries = np.empty((int(capacity), 6))
        self.used = 0
        self.starts = []        # per image: (n_slabs,) start of each slab's entries
        self.counts = []

    def reserve(self, counts):
        """Room for one image's entries (``counts`` per slab, from ``count_2d``/``count_3d``), in call order:
        the start of each slab's run, or None when the buffer is full (``insert`` empties it)."""
        n = int(counts.sum())
        if self.used + n > len(self.entries):
            return None
        starts = np.empty(self.n_slabs, np.int64)
        starts[0] = self.used
        np.cumsum(counts[:-1], out=starts[1:])
        starts[1:] += self.used
        self.used += n
        self.starts.append(starts)
        self.counts.append(counts)
        return starts.copy()

    def count_2d(self, f2d, fctf, ainv, max_r2, min_r2_nn, nn=False):
        """Entries per slab of one 2-D image (arguments as ``backproject_2d_to_3d``)."""
        counts = np.zeros(self.n_slabs, np.int64)
        _walk_2d(_NO_ACC, f2d, fctf, ainv, int(max_r2), float(min_r2_nn), bool(nn), False, False,
                 self.grid_shape, self.slab_h, counts, _NO_I, _NO_E, 1)
        return counts

    def count_3d(self, f3d, fctf, ainv, r_max_ref_2, r_min_nn_ref_2, nn=False):
        """Entries per slab of one 3-D subtomogram (arguments as ``backrotate_3d``)."""
        _check_3d(self.grid_shape[0], f3d, fctf, r_max_ref_2)
        counts = np.zeros(self.n_slabs, np.int64)
        _walk_3d(_NO_ACC, f3d, fctf, ainv, int(r_max_ref_2), int(r_min_nn_ref_2), bool(nn), False, False,
                 self.grid_shape, self.slab_h, counts, _NO_I, _NO_E, 1)
        return counts

    def fill_2d(self, starts, f2d, fctf, ainv, max_r2, min_r2_nn, nn=False, center_sign=True, zero_dc=True):
        """Write one 2-D image's entries at the room ``reserve`` gave (thread-safe for different images)."""
        _walk_2d(_NO_ACC, f2d, fctf, ainv, int(max_r2), float(min_r2_nn), bool(nn), bool(center_sign),
                 bool(zero_dc), self.grid_shape, self.slab_h, _NO_I, starts, self.entries, 2)

    def fill_3d(self, starts, f3d, fctf, ainv, r_max_ref_2, r_min_nn_ref_2, nn=False, center_sign=True,
                zero_dc=True):
        """Write one 3-D subtomogram's entries at the room ``reserve`` gave."""
        _walk_3d(_NO_ACC, f3d, fctf, ainv, int(r_max_ref_2), int(r_min_nn_ref_2), bool(nn), bool(center_sign),
                 bool(zero_dc), self.grid_shape, self.slab_h, _NO_I, starts, self.entries, 2)

    def insert(self, acc):
        """Add every resolved entry to the accumulator and empty the buffer."""
        _check_accumulator(acc)
        if self.starts:
            _insert_slabs(acc, self.entries, np.array(self.starts), np.array(self.counts), self.slab_h)
        self.used = 0
        self.starts, self.counts = [], []


@njit(parallel=True)
def _insert_slabs(acc, entries, starts, counts, slab_h):
    n_img, n_slabs = starts.shape
    off = (acc.shape[1] - 1) // 2
    for phase in range(2):
        for ss in numba.prange((n_slabs + 1 - phase) // 2):
            s = 2 * ss + phase
            for b in range(n_img):
                st = starts[b, s]
                for m in range(st, st + counts[b, s]):
                    e = entries[m]
                    if e[5] > 0.0:
                        _add_entry(acc, off, e[0], e[1], e[2], e[3], e[4], e[5], 1)
                    else:
                        _add_entry(acc, off, e[0], e[1], e[2], e[3], e[4], -e[5], 2)


def _check_accumulator(acc):
    if acc.dtype != np.float64 or acc.ndim != 4 or acc.shape[3] != 3 or not acc.flags.c_contiguous:
        raise ValueError("insertion accumulator must be a C-contiguous (pad, pad, pad//2+1, 3) float64 array")
    pad = acc.shape[0]
    if acc.shape[1] != pad or acc.shape[2] != pad // 2 + 1 or pad % 2 != 1:
        raise ValueError(f"insertion accumulator has shape {acc.shape}, expected (pad, pad, pad//2+1, 3), "
                         "pad odd")


def _check_grid(data, weight):
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
# --------------------------------------------------------------------------------------------------------

@njit
def _enforce_hermitian_symmetry(data, weight):
    pad = data.shape[0]
    off = (pad - 1) // 2
    for iz in range(-off, off + 1):
        starty = 0 if iz < 0 else 1
        for iy in range(starty, off + 1):
            a = data[iz + off, iy + off, 0]
            b = data[-iz + off, -iy + off, 0]
            fsum = complex(a.real + b.real, a.imag - b.imag)
            data[iz + off, iy + off, 0] = fsum
            data[-iz + off, -iy + off, 0] = complex(fsum.real, -fsum.imag)
            s = weight[iz + off, iy + off, 0] + weight[-iz + off, -iy + off, 0]
            weight[iz + off, iy + off, 0] = s
            weight[-iz + off, -iy + off, 0] = s


def enforce_hermitian_symmetry(data, weight):
    """Make the x = 0 plane Hermitian by *summing* each pair (z, y) / (-z, -y), in place.

    Mirrors ``BackProjector::enforceHermitianSymmetry``: data(z,y,0) ← data(z,y,0) + conj(data(-z,-y,0)),
    its partner ← the conjugate; both weights ← their sum. The DC voxel is untouched.
    data, weight: the padded grid (see module doc).
    """
    _check_grid(data, weight)
    _enforce_hermitian_symmetry(data, weight)


@njit(inline="always")
def _lerp(a, lo, hi):
    return lo + (hi - lo) * a


@njit(parallel=True)
def _rotate_add(data, weight, sum_data, sum_weight, rot, rmax2, z_phase):
    pad = data.shape[0]
    xdim = data.shape[2]
    off = (pad - 1) // 2
    r00, r01, r02 = rot[0, 0], rot[0, 1], rot[0, 2]
    r10, r11, r12 = rot[1, 0], rot[1, 1], rot[1, 2]
    r20, r21, r22 = rot[2, 0], rot[2, 1], rot[2, 2]
    do_phase = z_phase != 0.0
    for kk in numba.prange(pad):
        k = kk - off
        z = float(k)
        for i in range(-off, off + 1):
            y = float(i)
            for j in range(xdim):
                x = float(j)
                r2 = x * x + y * y + z * z
                if r2 > rmax2:
                    continue
                xp = x * r00 + y * r01 + z * r02
                yp = x * r10 + y * r11 + z * r12
                zp = x * r20 + y * r21 + z * r22
                neg = False
                if xp < 0.0:
                    xp = -xp
                    yp = -yp
                    zp = -zp
                    neg = True
                x0 = _floor(xp)
                fx = xp - x0
                x1 = x0 + 1
                y0 = _floor(yp)
                fy = yp - y0
                y0 += off
                y1 = y0 + 1
                z0 = _floor(zp)
                fz = zp - z0
                z0 += off
                z1 = z0 + 1
                d000 = data[z0, y0, x0]
                d001 = data[z0, y0, x1]
                d010 = data[z0, y1, x0]
                d011 = data[z0, y1, x1]
                d100 = data[z1, y0, x0]
                d101 = data[z1, y0, x1]
                d110 = data[z1, y1, x0]
                d111 = data[z1, y1, x1]
                dx00r = _lerp(fx, d000.real, d001.real)
                dx00i = _lerp(fx, d000.imag, d001.imag)
                dx01r = _lerp(fx, d100.real, d101.real)
                dx01i = _lerp(fx, d100.imag, d101.imag)
                dx10r = _lerp(fx, d010.real, d011.real)
                dx10i = _lerp(fx, d010.imag, d011.imag)
                dx11r = _lerp(fx, d110.real, d111.real)
                dx11i = _lerp(fx, d110.imag, d111.imag)
                dxy0r = _lerp(fy, dx00r, dx10r)
                dxy0i = _lerp(fy, dx00i, dx10i)
                dxy1r = _lerp(fy, dx01r, dx11r)
                dxy1i = _lerp(fy, dx01i, dx11i)
                vr = _lerp(fz, dxy0r, dxy1r)
                vi = _lerp(fz, dxy0i, dxy1i)
                if neg:
                    vi = -vi
                if do_phase:
                    dotp = 2 * PI * (z * z_phase)
                    a = math.cos(dotp)
                    b = math.sin(dotp)
                    ac = a * vr
                    bd = b * vi
                    ab_cd = (a + b) * (vr + vi)
                    vr = ac - bd
                    vi = ab_cd - ac - bd
                s = sum_data[kk, i + off, j]
                sum_data[kk, i + off, j] = complex(s.real + vr, s.imag + vi)
                w000 = weight[z0, y0, x0]
                w001 = weight[z0, y0, x1]
                w010 = weight[z0, y1, x0]
                w011 = weight[z0, y1, x1]
                w100 = weight[z1, y0, x0]
                w101 = weight[z1, y0, x1]
                w110 = weight[z1, y1, x0]
                w111 = weight[z1, y1, x1]
                wx00 = _lerp(fx, w000, w001)
                wx01 = _lerp(fx, w100, w101)
                wx10 = _lerp(fx, w010, w011)
                wx11 = _lerp(fx, w110, w111)
                wxy0 = _lerp(fy, wx00, wx10)
                wxy1 = _lerp(fy, wx01, wx11)
                sum_weight[kk, i + off, j] += _lerp(fz, wxy0, wxy1)


def apply_point_group_symmetry(data, weight, operators, rmax2):
    """Sum the grid over a point group, in place: for each operator R (identity excluded) and every voxel k
    with |k|² <= rmax2, add the trilinear interpolation of the *unsymmetrised* grid at R·k.

    Mirrors ``BackProjector::applyPointGroupSymmetry`` (a sum, not an average).
    data, weight: the padded grid; operators: (n_ops, 3, 3) float64 (``symmetry.point_group_operators``);
    rmax2: int ROUND(pf·r_max)².
    """
    _check_grid(data, weight)
    ops = np.ascontiguousarray(operators, dtype=np.float64).reshape(-1, 3, 3)
    if len(ops) == 0:
        return
    sum_data = data.copy()
    sum_weight = weight.copy()
    for r in ops:
        _rotate_add(data, weight, sum_data, sum_weight, np.ascontiguousarray(r), float(rmax2), 0.0)
    data[...] = sum_data
    weight[...] = sum_weight


def apply_helical_symmetry(data, weight, nr_asu, twist_deg, rise_px, rmax2, ori_size, pf):
    """Sum the grid over ``nr_asu`` helical asymmetric units, in place.

    Mirrors ``BackProjector::applyHelicalSymmetry``: for hh in [-nr/2, -(-nr/2) + nr%2), hh != 0, rotate by
    ``Rz(hh · (-twist))`` (RELION's ``rotation3DMatrix``, entries below 1e-6 zeroed), interpolate as in the
    point-group sum and, if the rise is non-zero, phase-shift by ``z · (-hh · rise_px / (ori_size · pf))``.
    rise_px: helical rise in pixels; pf: padding factor as float32-rounded double.
    """
    _check_grid(data, weight)
    if nr_asu < 2:
        return
    sum_data = data.copy()
    sum_weight = weight.copy()
    h_min = -(nr_asu // 2)
    h_max = -h_min + nr_asu % 2
    for hh in range(h_min, h_max):
        if hh == 0:
            continue
        ang = (hh * (-twist_deg)) * PI / 180.0
        c, s = math.cos(ang), math.sin(ang)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        rot[np.abs(rot) < 1e-6] = 0.0
        zphase = 0.0
        if abs(rise_px) > 0.0:
            zphase = hh * rise_px
            zphase /= -(ori_size * pf)
        _rotate_add(data, weight, sum_data, sum_weight, rot, float(rmax2), zphase)
    data[...] = sum_data
    weight[...] = sum_weight


# --------------------------------------------------------------------------------------------------------
# Reconstruction (BackProjector::reconstruct)
# --------------------------------------------------------------------------------------------------------

def ft_blob_table(radius, alpha, order, n=10000):
    """Tabulated Fourier transform of a Kaiser–Bessel blob, ``TabFtBlob`` (src/tabfuncs.cpp) with
    ``kaiser_Fourier_value`` (src/funcs.cpp): n samples at ω = i · 0.5/n. RELION builds the table with
    radius ``2 · blob_r``. Orders 0 and 2 only (RELION errors on others).
    Returns (table (n,) float64, sampling)."""
    from scipy import special
    if order not in (0, 2):
        raise RelionPyError(f"--blob_m {order}: only blob orders 0 and 2 exist in RELION")
    sampling = 0.5 / n
    w = np.arange(n) * sampling
    a = float(radius)
    arg = 2. * PI * a * w
    sigma = np.sqrt(np.abs(alpha * alpha - arg * arg))
    nu = 1.5 if order == 0 else 3.5
    with np.errstate(divide="ignore", invalid="ignore"):
        # modified Bessel of half-integer order through RELION's closed forms / recurrences
        i05 = np.sqrt(2 / (PI * sigma)) * np.sinh(sigma)
        i15 = np.sqrt(2 / (PI * sigma)) * (np.cosh(sigma) - np.sinh(sigma) / sigma)
        if order == 0:
            ival = i15
        else:
            i25 = i05 - ((2 * 1.5) / sigma) * i15
            ival = i15 - ((2 * 2.5) / sigma) * i25
        jval = special.jv(nu, sigma)
        bes = np.where(arg > alpha, jval, ival)
        pre = (2. * PI) ** 1.5 * a ** 3 * (alpha ** 2 if order == 2 else 1.0)
        table = pre * bes / (float(special.i0(alpha)) * sigma ** nu)
    return np.nan_to_num(table), sampling


def decenter(grid, max_r2):
    """The padded grid in FFTW half-transform order (logical index 0 at array index 0), zero beyond
    ``kp² + ip² + jp² > max_r2``. Mirrors ``Projector::decenter``. grid: (pad, pad, pad//2+1)."""
    pad = grid.shape[0]
    off = (pad - 1) // 2
    out = np.roll(grid, (-off, -off), axis=(0, 1))
    q = np.arange(pad)
    q = np.where(q < pad // 2 + 1, q, q - pad)
    r2 = q[:, None, None] ** 2 + q[None, :, None] ** 2 + np.arange(grid.shape[2])[None, None, :] ** 2
    out[r2 > max_r2] = 0
    return out


@njit
def _radial_floor_divide(fconv, fweight, pf, r_max, round_max_r2):
    nz, ny, nx = fweight.shape
    radavg = np.zeros(r_max)
    counter = np.zeros(r_max)
    for k in range(nz):
        kp = k if k < nx else k - nz
        for i in range(ny):
            ip = i if i < nx else i - ny
            for j in range(nx):
                r2 = kp * kp + ip * ip + j * j
                if r2 < round_max_r2:
                    ires = _floor(math.sqrt(float(r2)) / pf)
                    if ires >= r_max:
                        return -1
                    radavg[ires] += fweight[k, i, j]
                    counter[ires] += 1.
    for i in range(r_max):
        if counter[i] > 0. or radavg[i] > 0.:
            radavg[i] /= 1000. * counter[i]
        else:
            return -2
    for k in range(nz):
        kp = k if k < nx else k - nz
        for i in range(ny):
            ip = i if i < nx else i - ny
            for j in range(nx):
                r2 = kp * kp + ip * ip + j * j
                ires = _floor(math.sqrt(float(r2)) / pf)
                floor_w = radavg[ires] if ires < r_max else radavg[r_max - 1]
                wgt = max(fweight[k, i, j], floor_w)
                if wgt != 0.0:
                    v = fconv[k, i, j]
                    fconv[k, i, j] = complex(v.real / wgt, v.imag / wgt)
    return 0


def radial_floor_divide(fconv, fweight, pf, r_max, round_max_r2):
    """Divide the data by the weights, floored at 1/1000 of the shell-average weight, in place.

    Mirrors the ``skip_gridding`` branch of ``BackProjector::reconstruct``: shells ``floor(r / pf)`` of the
    padded half grid (r² < ``round_max_r2``) give radavg = Σw / (1000 · count); then every element is
    divided by max(w, radavg[min(shell, r_max - 1)]) unless that is 0.
    fconv: (pad, pad, pad//2+1) complex128 (decentered data), fweight: same shape float64.
    pf: padding factor (double of the float32 value); r_max, round_max_r2: ints.
    """
    rc = _radial_floor_divide(fconv, fweight, float(pf), int(r_max), int(round_max_r2))
    if rc == -1:
        raise RelionPyError("internal: weight shell index beyond r_max (BUG in RELION's terms)")
    if rc == -2:
        raise RelionPyError("the reconstruction received no data at all: every weight shell is empty "
                            "(no particles selected, or all weights zero)")


@njit
def _add_map_term(fweight, tau2, pf, oversampling, max_r2):
    nz, ny, nx = fweight.shape
    for k in range(nz):
        kp = k if k < nx else k - nz
        for i in range(ny):
            ip = i if i < nx else i - ny
            for j in range(nx):
                r2 = kp * kp + ip * ip + j * j
                if r2 < max_r2:
                    ires = _round(math.sqrt(float(r2)) / pf)
                    invw = fweight[k, i, j]
                    t = tau2[ires]
                    if t > 0.:
                        invtau2 = 1. / (oversampling * 1.0 * t)
                    elif t < 1e-20:
                        if invw > 1e-20:
                            invtau2 = 1. / (0.001 * invw)
                        else:
                            invtau2 = 0.
                    else:
                        return -1
                    fweight[k, i, j] = invw + invtau2
    return 0


def add_map_term(fweight, tau2, pf, oversampling, max_r2):
    """Add the inverse signal power 1/(pf³·tau2[shell]) to the decentered weights, in place (``--fsc``).

    Mirrors the ``do_map`` block of ``BackProjector::reconstruct`` (tau2_fudge 1, minres_map -1): shells
    ``ROUND(r / pf)``; where tau2 is 0 the weight gets 1/(0.001·w) if w > 1e-20.
    fweight: (pad, pad, pad//2+1) float64; tau2: (N/2+1,) float64.
    """
    if _add_map_term(fweight, np.ascontiguousarray(tau2, np.float64), float(pf), float(oversampling),
                     int(max_r2)) != 0:
        raise RelionPyError("negative tau2 spectrum from the --fsc curve")


@njit
def _ssnr_sigma2(weight, pf, oversampling, max_r2, nshell):
    pad = weight.shape[0]
    off = (pad - 1) // 2
    sigma2 = np.zeros(nshell)
    counter = np.zeros(nshell)
    for k in range(-off, off + 1):
        for i in range(-off, off + 1):
            for j in range(weight.shape[2]):
                r2 = k * k + i * i + j * j
                if r2 < max_r2:
                    ires = _round(math.sqrt(float(r2)) / pf)
                    sigma2[ires] += oversampling * weight[k + off, i + off, j]
                    counter[ires] += 1.
    return sigma2, counter


def fsc_tau2(weight, fsc, pf, oversampling, max_r2):
    """The signal power spectrum tau2 implied by an FSC curve (``BackProjector::updateSSNRarrays`` with
    ``update_tau2_with_fsc``, half-set FSC): sigma2 = count / Σ pf³·w per shell ROUND(r/pf); fsc clamped to
    [0.001, 0.999]; tau2 = fsc/(1-fsc) · sigma2.
    weight: the padded weight grid (after symmetrisation); fsc: (N/2+1,) float64. Returns (N/2+1,) float64.
    """
    fsc = np.asarray(fsc, np.float64)
    s2, cnt = _ssnr_sigma2(weight, float(pf), float(oversampling), int(max_r2), len(fsc))
    sigma2 = np.zeros_like(s2)
    for i in range(len(s2)):
        if s2[i] > 1e-20:
            sigma2[i] = cnt[i] / s2[i]
        elif s2[i] == 0:
            sigma2[i] = 0.
        else:
            raise RelionPyError("unexpectedly small, yet non-zero sigma2 value in the --fsc regularisation")
    myfsc = np.minimum(0.999, np.maximum(0.001, fsc))
    ssnr = myfsc / (1. - myfsc)
    return ssnr * sigma2


@njit
def _blob_multiply(m, table, sampling, norm, size_pf):
    n0, n1, n2 = m.shape
    h0 = n0 // 2
    ntab = table.shape[0]
    for k in range(n0):
        kp = k if k < h0 else k - n0
        for i in range(n1):
            ip = i if i < h0 else i - n1
            for j in range(n2):
                jp = j if j < h0 else j - n2
                rval = math.sqrt(float(kp * kp + ip * ip + jp * jp)) / size_pf
                idx = int(abs(rval) / sampling)
                b = table[idx] if idx < ntab else 0.
                m[k, i, j] *= (b / norm)


def blob_multiply(m, table, sampling, size_pf):
    """Multiply a real pad³ volume by the Fourier transform of the gridding blob, in place
    (``BackProjector::convoluteBlobRealSpace`` without masking): voxel (k, i, j) with wrapped coordinates
    (``k < pad/2 ? k : k - pad``) × tab(ρ)/tab(0), ρ = |(kp, ip, jp)| / size_pf, ``TabFtBlob`` lookup
    ``table[(int)(ρ / sampling)]`` (0 beyond the table). m: (pad, pad, pad) float64.
    """
    _blob_multiply(m, np.ascontiguousarray(table, np.float64), float(sampling), float(table[0]),
                   float(size_pf))


@njit
def _gridding_update(fnewweight, fconv, max_r2):
    nz, ny, nx = fconv.shape
    for k in range(nz):
        kp = k if k < nx else k - nz
        for i in range(ny):
            ip = i if i < nx else i - ny
            for j in range(nx):
                if kp * kp + ip * ip + j * j < max_r2:
                    v = fconv[k, i, j]
                    w = max(1e-6, math.sqrt(v.real * v.real + v.imag * v.imag))
                    fnewweight[k, i, j] /= w


def gridding_update(fnewweight, fconv, max_r2):
    """One Pipe–Menon step (Eq. 14): Fnewweight ← Fnewweight / max(1e-6, |Fconv|) for r² < max_r2, in place.
    Mirrors the iteration loop of ``BackProjector::reconstruct``. Both (pad, pad, pad//2+1)."""
    _gridding_update(fnewweight, fconv, int(max_r2))


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


@njit
def _soft_mask_outside_map(vol, radius, width):
    nz, ny, nx = vol.shape
    oz, oy, ox = nz // 2, ny // 2, nx // 2
    radius_p = radius + width
    s = 0.
    s_bg = 0.
    for k in range(nz):
        for i in range(ny):
            for j in range(nx):
                r = math.sqrt(float((k - oz) ** 2 + (i - oy) ** 2 + (j - ox) ** 2))
                if r < radius:
                    continue
                elif r > radius_p:
                    s += 1.
                    s_bg += vol[k, i, j]
                else:
                    c = 0.5 + 0.5 * math.cos(PI * (radius_p - r) / width)
                    s += c
                    s_bg += c * vol[k, i, j]
    s_bg /= s
    for k in range(nz):
        for i in range(ny):
            for j in range(nx):
                r = math.sqrt(float((k - oz) ** 2 + (i - oy) ** 2 + (j - ox) ** 2))
                if r < radius:
                    continue
                elif r > radius_p:
                    vol[k, i, j] = s_bg
                else:
                    c = 0.5 + 0.5 * math.cos(PI * (radius_p - r) / width)
                    vol[k, i, j] = (1 - c) * vol[k, i, j] + c * s_bg


def soft_mask_outside_map(vol, radius=-1.0, width=3.0):
    """Replace the corners of a cube by their (cosine-weighted) mean, in place. Mirrors
    ``softMaskOutsideMap`` (src/mask.cpp) without a noise map: radius defaults to size/2, cosine edge
    ``width`` px, logical origin at size//2. vol: (n, n, n) float64."""
    if radius < 0:
        radius = vol.shape[2] / 2.
    _soft_mask_outside_map(vol, float(radius), float(width))


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
                    sinc = math.sin(PI * rval) / (PI * rval)
                    if sinc_power == 1:
                        vol[k, i, j] /= sinc
                    else:
                        vol[k, i, j] /= sinc * sinc


def gridding_correct(vol, size_pf, sinc_power=2):
    """Divide a real-space map by the transform of the interpolation kernel, in place
    (``Projector::griddingCorrect``): ÷ sinc²(r / (N·pf)) (trilinear), or ÷ sinc for pure nearest neighbour
    (``sinc_power`` 1). size_pf: N·pf as RELION computes it (float32 product). vol: (N, N, N) float64."""
    _gridding_correct(vol, float(size_pf), int(sinc_power))
