"""Contrast transfer function, evaluated point by point inside other kernels, or as a half-grid image.

Mirrors ``CTF::initialise`` (src/ctf.cpp) and ``CTF::getCTF`` (src/ctf.h). All in double precision,
as in RELION; callers round to float32 where RELION stores the value in a float image.
"""
import math

import numpy as np

from ._jit import njit

CTF_MIN_ABS = 1e-8  # RELION clamps |CTF| away from zero (sign of 0 is +)


@njit(inline="always")
def ctf_constants(voltage_kv, cs_mm, q0, bfactor, phase_shift_deg):
    """(K1, K2, K3, K4, K5) of ``CTF::initialise``: wavelength (Å) terms, amplitude-contrast phase,
    B-factor envelope and phase plate shift."""
    v = voltage_kv * 1e3
    lam = 12.2643247 / math.sqrt(v * (1.0 + v * 0.978466e-6))  # relativistic electron wavelength, Å
    k1 = math.pi * lam
    k2 = math.pi / 2.0 * (cs_mm * 1e7) * lam * lam * lam
    k3 = math.atan(q0 / math.sqrt(1.0 - q0 * q0))
    k4 = -bfactor / 4.0
    k5 = phase_shift_deg * math.pi / 180.0
    return k1, k2, k3, k4, k5


@njit(inline="always")
def astigmatism_form(defocus_u, defocus_v, angle_deg):
    """(Axx, Axy, Ayy): the quadratic form of the astigmatic defocus (``CTF::initialise``).
    Defocus in Å, positive = underfocus."""
    phi = angle_deg * math.pi / 180.0
    c = math.cos(phi)
    s = math.sin(phi)
    axx = -(defocus_u * c * c + defocus_v * s * s)
    axy = (defocus_v - defocus_u) * s * c
    ayy = -(defocus_u * s * s + defocus_v * c * c)
    return axx, axy, ayy


@njit(inline="always")
def ctf_gamma(fx, fy, k1, k2, k3, k5, axx, axy, ayy, gamma_offset):
    """Phase aberration γ at spatial frequency (fx, fy) in 1/Å."""
    u2 = fx * fx + fy * fy
    return k1 * (axx * fx * fx + 2.0 * axy * fx * fy + ayy * fy * fy) + k2 * u2 * u2 - k5 - k3 + gamma_offset


@njit(inline="always")
def clamp_ctf(ctf):
    """RELION's final clamp: |CTF| >= 1e-8, keeping the sign (0 counts as positive)."""
    if abs(ctf) < CTF_MIN_ABS:
        return CTF_MIN_ABS if ctf >= 0.0 else -CTF_MIN_ABS
    return ctf


@njit(inline="always")
def ctf_value(fx, fy, k1, k2, k3, k4, k5, axx, axy, ayy, scale, gamma_offset):
    """Signed CTF ``-sin(γ)·exp(K4·u²)·scale`` at (fx, fy) in 1/Å, clamped (``CTF::getCTF``)."""
    u2 = fx * fx + fy * fy
    gamma = ctf_gamma(fx, fy, k1, k2, k3, k5, axx, axy, ayy, gamma_offset)
    return clamp_ctf(-math.sin(gamma) * math.exp(k4 * u2) * scale)


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
            if intact_first_peak and abs(gamma) < math.pi / 2.0:
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
