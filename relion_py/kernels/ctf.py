"""Contrast transfer function, evaluated point by point inside other kernels.

Mirrors ``CTF::initialise`` (src/ctf.cpp) and ``CTF::getCTF`` (src/ctf.h). All in double precision,
as in RELION; callers round to float32 where RELION stores the value in a float image.
"""
import math

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
