"""Insertion of 2-D image transforms and 3-D subtomogram transforms into the padded Fourier grid:
``BackProjector::backproject2Dto3D`` and ``BackProjector::backrotate3D`` (src/backprojector.cpp), the
engine of ``relion_reconstruct``, image by image or many images at once slab by slab (``SlabEntries``).

All arithmetic is float64 and follows RELION's evaluation order where it decides which voxels are filled
(the pixel loops and their bounds are RELION's). FFTs are done by the callers. The grid layout is
described in :mod:`.padded_grid`.
"""
import math

import numba
import numpy as np

from .._jit import njit
from .macros import iceil, ifloor, iround
from .padded_grid import check_accumulator


@njit(inline="always")
def _splat(acc, z0, y0, x0, fx, fy, fz, vr, vi, wt, z_lo, z_hi):
    """Trilinear splat into the planes z0, z0 + 1 that lie in [z_lo, z_hi)."""
    mfx = 1. - fx
    mfy = 1. - fy
    mfz = 1. - fz
    for dz in range(2):
        if z0 + dz < z_lo or z0 + dz >= z_hi:
            continue
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
def _add_entry(acc, off, xp, yp, zp, vr, vi, wt, mode, z_lo, z_hi):
    """Add one resolved entry to the planes [z_lo, z_hi) of acc: mode 1 = trilinear splat at (xp, yp, zp)
    (x >= 0 half), mode 2 = nearest neighbour at the integer logical voxel (xp, yp, zp)."""
    if mode == 1:
        x0 = ifloor(xp)
        y0 = ifloor(yp)
        z0 = ifloor(zp)
        _splat(acc, z0 + off, y0 + off, x0, xp - x0, yp - y0, zp - z0, vr, vi, wt, z_lo, z_hi)
    else:
        x0 = int(xp)
        y0 = int(yp) + off
        z0 = int(zp) + off
        if z_lo <= z0 < z_hi:
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
            x0 = ifloor(xp)
            y0 = ifloor(yp) + off
            z0 = ifloor(zp) + off
            if x0 < 0 or x0 + 1 >= xdim or y0 < 0 or y0 + 1 >= ydim or z0 < 0 or z0 + 1 >= zdim:
                return 0, xp, yp, zp, vi
        return 1, xp, yp, zp, vi
    x0 = iround(xp)
    y0 = iround(yp)
    z0 = iround(zp)
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
def _lowest_plane(mode, zp, off):
    """The lowest destination z plane of a resolved entry (a splat also reaches the plane above)."""
    if mode == 1:
        return ifloor(zp) + off
    return int(zp) + off


@njit(inline="always")
def _reaches_next_slab(mode, z0, slab_h):
    """Whether the splat of an entry whose lowest plane is z0 also reaches the next slab's first plane."""
    return mode == 1 and (z0 + 1) % slab_h == 0


@njit(inline="always")
def _emit(off, xp, yp, zp, vr, vi, wt, mode, slab_h, counts, entries):
    """Append one insertion of a walk to ``entries`` (in walk order, ``counts[-1]`` the running total) and
    count it in each slab it reaches (the weight's sign marks nearest-neighbour entries; weights are > 0)."""
    z0 = _lowest_plane(mode, zp, off)
    counts[z0 // slab_h] += 1
    if _reaches_next_slab(mode, z0, slab_h):
        counts[z0 // slab_h + 1] += 1
    e = entries[counts[-1]]
    counts[-1] += 1
    e[0] = xp
    e[1] = yp
    e[2] = zp
    e[3] = vr
    e[4] = vi
    e[5] = wt if mode == 1 else -wt


@njit
def _walk_2d(acc, f2d, fctf, ainv, max_r2, min_r2_nn, nn, center_sign, zero_dc, grid_shape, slab_h, counts,
             entries):
    """The pixel loop of ``BackProjector::backproject2Dto3D`` (identity magnification, no Ewald sphere).
    With ``acc`` None, write the entries in walk order and count them per slab (``_emit``); otherwise insert
    into acc (``counts`` and ``entries`` unused).

    The task is told by acc's type, not by a run-time flag: Numba prunes a branch on an argument that is
    None, so the resolving walk is compiled without the grid additions. (With a flag, they kept LLVM from
    holding the walk in registers: resolving a 96³ pseudo-subtomogram took 6.3 instead of 1.7 ms.)"""
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
        first_x = iceil(q - d)
        last_x = ifloor(q + d)
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
            if acc is None:             # resolving: Numba compiles this walk without the other branch
                _emit(off, xp, yp, zp, vr, vi, wt, mode, slab_h, counts, entries)
            else:
                _add_entry(acc, off, xp, yp, zp, vr, vi, wt, mode, 0, acc.shape[0])


@njit
def _walk_3d(acc, f3d, fctf, ainv, r_max_ref_2, r_min_nn_ref_2, nn, center_sign, zero_dc, grid_shape, slab_h,
             counts, entries):
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
            x_max = ifloor(math.sqrt(r_max_src_2 - yz2))
            yf = float(y)
            zf = float(z)
            for x in range(x_min, x_max + 1):
                # both tests skip the voxel, so their order does not matter; the weight's is cheaper and
                # often true (missing wedge, dose cut-off of pseudo-subtomograms)
                wt = fctf[k, i, x]
                if wt <= 0.0:
                    continue
                xf = float(x)
                xp = a00 * xf + a01 * yf + a02 * zf
                yp = a10 * xf + a11 * yf + a12 * zf
                zp = a20 * xf + a21 * yf + a22 * zf
                r_ref_2 = int(xp * xp + yp * yp + zp * zp)
                if r_ref_2 > r_max_ref_2:
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
                if acc is None:
                    _emit(off, xp, yp, zp, vr, vi, wt, mode, slab_h, counts, entries)
                else:
                    _add_entry(acc, off, xp, yp, zp, vr, vi, wt, mode, 0, acc.shape[0])


# the direct walks' counts and entries: never written, but typed (Numba prunes a branch only on an argument
# that is None, so a walk given an accumulator still compiles the resolving branch)
_UNUSED_COUNTS = np.zeros(1, np.int64)
_UNUSED_ENTRIES = np.zeros((1, 6))


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
    check_accumulator(acc)
    if f2d.shape != fctf.shape or f2d.ndim != 2:
        raise ValueError("backproject_2d_to_3d: f2d and fctf must have the same 2-D shape")
    _walk_2d(acc, f2d, fctf, np.ascontiguousarray(ainv, np.float64), int(max_r2), float(min_r2_nn), bool(nn),
             bool(center_sign), bool(zero_dc), np.array(acc.shape[:3], np.int64), 1, _UNUSED_COUNTS,
             _UNUSED_ENTRIES)


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
    check_accumulator(acc)
    _check_3d(acc.shape[0], f3d, fctf, r_max_ref_2)
    _walk_3d(acc, f3d, fctf, np.ascontiguousarray(ainv, np.float64), int(r_max_ref_2), int(r_min_nn_ref_2),
             bool(nn), bool(center_sign), bool(zero_dc), np.array(acc.shape[:3], np.int64), 1, _UNUSED_COUNTS,
             _UNUSED_ENTRIES)


def _check_3d(pad, f3d, fctf, r_max_ref_2):
    if f3d.shape != fctf.shape or f3d.ndim != 3:
        raise ValueError("backrotate_3d: f3d and fctf must have the same 3-D shape")
    p = (pad - 1) // 2 - 1
    if r_max_ref_2 > p * p:                 # keeps every splat inside the grid (RELION does not test)
        raise ValueError("backrotate_3d: r_max_ref_2 exceeds the padded grid")


class SlabEntries:
    """Insertion of many images at once, with the padded grid visited slab by slab (memory-bound otherwise).

    Each image is first *resolved* (``resolve_2d`` / ``resolve_3d``: the exact pixel/voxel loop of
    ``backproject2Dto3D`` / ``backrotate3D``, run once) into entries (x, y, z, re, im, ±weight) in a scratch
    array, in walk order, counted per destination slab of ``slab_h`` z planes (a splat whose two planes lie
    in two slabs counts in both); ``reserve`` then gives it room in the shared buffer in image order and
    ``place`` copies its entries there sorted by slab (a stable counting sort: walk order kept within a
    slab); ``insert`` adds all entries of all images slab by slab, all slabs in parallel, each writing only
    its own planes, so that the destination planes stay in cache while every image passes. Every voxel thus
    receives its additions in image order and, within an image, in walk order: the sums are bit for bit
    those of RELION's image-by-image insertion, whatever the buffer's capacity and the thread count.
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

    @staticmethod
    def scratch(shape):
        """Room for the entries of one image of half-grid ``shape`` (at most one per pixel / voxel)."""
        return np.empty((int(np.prod(shape)), 6))

    def reserve(self, counts):
        """Room for one image's entries (``counts`` per slab, from ``resolve_*``), in call order: the start
        of each slab's run, or None when the buffer is full (``insert`` empties it)."""
        counts = counts[:-1]
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

    def resolve_2d(self, scratch, f2d, fctf, ainv, max_r2, min_r2_nn, nn=False, center_sign=True, zero_dc=True):
        """One 2-D image's entries into ``scratch`` (arguments as ``backproject_2d_to_3d``); returns the
        counts per slab, then the total (n_slabs + 1,)."""
        counts = np.zeros(self.n_slabs + 1, np.int64)
        _walk_2d(None, f2d, fctf, ainv, int(max_r2), float(min_r2_nn), bool(nn), bool(center_sign),
                 bool(zero_dc), self.grid_shape, self.slab_h, counts, scratch)
        return counts

    def resolve_3d(self, scratch, f3d, fctf, ainv, r_max_ref_2, r_min_nn_ref_2, nn=False, center_sign=True,
                   zero_dc=True):
        """One 3-D subtomogram's entries into ``scratch`` (arguments as ``backrotate_3d``)."""
        _check_3d(self.grid_shape[0], f3d, fctf, r_max_ref_2)
        counts = np.zeros(self.n_slabs + 1, np.int64)
        _walk_3d(None, f3d, fctf, ainv, int(r_max_ref_2), int(r_min_nn_ref_2), bool(nn), bool(center_sign),
                 bool(zero_dc), self.grid_shape, self.slab_h, counts, scratch)
        return counts

    def place(self, starts, scratch, counts):
        """Copy one image's resolved entries to the room ``reserve`` gave (thread-safe for different images)."""
        _place_by_slab(self.entries, starts.copy(), scratch, int(counts[-1]), (int(self.grid_shape[1]) - 1) // 2,
                       self.slab_h)

    def insert(self, acc):
        """Add every resolved entry to the accumulator and empty the buffer."""
        check_accumulator(acc)
        if self.starts:
            _insert_slabs(acc, self.entries, np.array(self.starts), np.array(self.counts), self.slab_h)
        self.used = 0
        self.starts, self.counts = [], []


@njit
def _place_by_slab(entries, starts, scratch, n, off, slab_h):
    for m in range(n):
        e = scratch[m]
        mode = 1 if e[5] > 0.0 else 2
        z0 = _lowest_plane(mode, e[2], off)
        slab = z0 // slab_h
        # also in the next slab, for its upper plane, if the splat reaches it
        for t in range(slab, slab + 2 if _reaches_next_slab(mode, z0, slab_h) else slab + 1):
            for c in range(6):
                entries[starts[t], c] = e[c]
            starts[t] += 1


@njit(parallel=True)
def _insert_slabs(acc, entries, starts, counts, slab_h):
    n_img, n_slabs = starts.shape
    off = (acc.shape[1] - 1) // 2
    for s in numba.prange(n_slabs):
        z_lo = s * slab_h
        z_hi = min(z_lo + slab_h, acc.shape[0])
        for b in range(n_img):
            st = starts[b, s]
            for m in range(st, st + counts[b, s]):
                e = entries[m]
                _add_entry(acc, off, e[0], e[1], e[2], e[3], e[4], abs(e[5]), 1 if e[5] > 0.0 else 2, z_lo, z_hi)
