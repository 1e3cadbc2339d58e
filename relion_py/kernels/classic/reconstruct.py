"""The weight division of ``BackProjector::reconstruct`` (src/backprojector.cpp): the radial weight floor
(``skip_gridding``), the ``--fsc`` map term (``updateSSNRarrays``), and the Pipe–Menon gridding iterations
with the blob of ``TabFtBlob`` (src/tabfuncs.cpp). All on decentered (FFTW-order) half grids, float64."""
import math

import numpy as np

from ...runtime.errors import RelionPyError
from .._jit import njit
from .macros import ifloor, iround


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
    arg = 2. * math.pi * a * w
    sigma = np.sqrt(np.abs(alpha * alpha - arg * arg))
    nu = 1.5 if order == 0 else 3.5
    with np.errstate(divide="ignore", invalid="ignore"):
        # modified Bessel of half-integer order through RELION's closed forms / recurrences
        i05 = np.sqrt(2 / (math.pi * sigma)) * np.sinh(sigma)
        i15 = np.sqrt(2 / (math.pi * sigma)) * (np.cosh(sigma) - np.sinh(sigma) / sigma)
        if order == 0:
            ival = i15
        else:
            i25 = i05 - ((2 * 1.5) / sigma) * i15
            ival = i15 - ((2 * 2.5) / sigma) * i25
        jval = special.jv(nu, sigma)
        bes = np.where(arg > alpha, jval, ival)
        pre = (2. * math.pi) ** 1.5 * a ** 3 * (alpha ** 2 if order == 2 else 1.0)
        table = pre * bes / (float(special.i0(alpha)) * sigma ** nu)
    return np.nan_to_num(table), sampling


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
                    ires = ifloor(math.sqrt(float(r2)) / pf)
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
                ires = ifloor(math.sqrt(float(r2)) / pf)
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
                    ires = iround(math.sqrt(float(r2)) / pf)
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
                    ires = iround(math.sqrt(float(r2)) / pf)
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
