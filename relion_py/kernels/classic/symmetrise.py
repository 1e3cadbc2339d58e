"""Symmetrisation of the padded Fourier grid: ``BackProjector::enforceHermitianSymmetry``,
``BackProjector::applyPointGroupSymmetry`` and ``BackProjector::applyHelicalSymmetry`` (the steps of
``BackProjector::symmetrise``, src/backprojector.cpp). Grid layout: :mod:`.padded_grid`."""
import math

import numba
import numpy as np

from .._jit import njit
from .macros import ifloor
from .padded_grid import check_grid


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
    check_grid(data, weight)
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
                x0 = ifloor(xp)
                fx = xp - x0
                x1 = x0 + 1
                y0 = ifloor(yp)
                fy = yp - y0
                y0 += off
                y1 = y0 + 1
                z0 = ifloor(zp)
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
                    dotp = 2 * math.pi * (z * z_phase)
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
    check_grid(data, weight)
    ops = np.ascontiguousarray(operators, dtype=np.float64).reshape(-1, 3, 3)
    if len(ops) == 0:
        return
    sum_data = data.copy()
    sum_weight = weight.copy()
    for r in ops:
        _rotate_add(data, weight, sum_data, sum_weight, np.ascontiguousarray(r), float(rmax2), 0.0)
    data[...] = sum_data
    weight[...] = sum_weight


def apply_helical_symmetry(data, weight, hh, rotations, rise_px, rmax2, ori_size, pf):
    """Sum the grid over the helical asymmetric units, in place.

    Mirrors ``BackProjector::applyHelicalSymmetry``: for each unit index hh (identity excluded) and its
    rotation ``Rz(hh · (-twist))`` (both from ``tomography.helical_symmetry.helical_rotations``), interpolate as in
    the point-group sum and, if the rise is non-zero, phase-shift by ``z · (-hh · rise_px / (ori_size · pf))``.
    hh: (m,) ints; rotations: (m, 3, 3) float64; rise_px: helical rise in pixels; pf: padding factor as
    float32-rounded double.
    """
    check_grid(data, weight)
    if len(hh) == 0:
        return
    sum_data = data.copy()
    sum_weight = weight.copy()
    for h, rot in zip(hh, rotations):
        zphase = 0.0
        if abs(rise_px) > 0.0:
            zphase = h * rise_px
            zphase /= -(ori_size * pf)
        _rotate_add(data, weight, sum_data, sum_weight, np.ascontiguousarray(rot, np.float64), float(rmax2),
                    float(zphase))
    data[...] = sum_data
    weight[...] = sum_weight
