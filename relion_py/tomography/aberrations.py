"""Higher-order optical aberrations from the optics table's Zernike coefficients.

Mirrors ``AberrationsCache`` (src/jaz/optics/aberrations_cache.cpp) and ``Zernike::Z_cart``
(src/jaz/math/Zernike.cpp): even (symmetric) coefficients give a phase offset added to the CTF's γ,
odd (antisymmetric) ones a phase factor by whose conjugate the data are multiplied.
"""
from math import factorial

import numpy as np

from .half_grid import half_grid

EVEN, ODD = "rlnEvenZernike", "rlnOddZernike"


def even_index_to_mn(i):
    """(m, n) of the i-th even Zernike coefficient (RELION's ordering)."""
    k = int(np.floor(np.sqrt(i)))
    return 2 * (i - k * k - k), 2 * k


def odd_index_to_mn(i):
    """(m, n) of the i-th odd Zernike coefficient (RELION's ordering)."""
    k = int(np.floor((np.sqrt(1 + 4 * i) - 1) / 2))
    n = 2 * k + 1
    return 2 * (i - k * k - k) - n, n


def zernike(m, n, rho, theta):
    """Zernike polynomial Z_n^m: R_n^|m|(ρ)·cos(mθ) for m ≥ 0, R_n^|m|(ρ)·sin(|m|θ) for m < 0
    (ρ not normalised: RELION evaluates it at spatial frequencies in 1/Å)."""
    am = abs(m)
    radial = np.zeros_like(rho)
    if (n - am) % 2 == 0:
        for k in range((n - am) // 2 + 1):
            c = (-1) ** k * factorial(n - k) / (factorial(k) * factorial((n + am) // 2 - k)
                                               * factorial((n - am) // 2 - k))
            radial = radial + c * rho ** (n - 2 * k)
    return radial * (np.cos(m * theta) if m >= 0 else np.sin(am * theta))


def _phase(coefficients, index_to_mn, rho, theta):
    total = np.zeros_like(rho)
    for i, c in enumerate(coefficients):
        m, n = index_to_mn(i)
        total += c * zernike(m, n, rho, theta)
    return total


def aberration_tables(optics, box, pixel_size):
    """Per optics group (rows of ``optics``), the even-aberration γ offset and the odd-aberration phase
    factor on the half grid of a ``box``-px image.

    pixel_size: Å/px of the frequencies; RELION uses binning × the pixel size of the FIRST optics group
    for every group (QUIRK). Returns (even (g, box, box//2+1) float64, odd (g, box, box//2+1) complex64);
    an absent column gives an array of shape (0, 1, 1) (no effect). Groups without coefficients get 0.
    """
    kx, ky = half_grid(box)
    scale = 1.0 / (pixel_size * box)
    fx, fy = kx * scale, ky * scale
    rho, theta = np.sqrt(fx * fx + fy * fy), np.arctan2(fy, fx)
    tables = []
    for label, index_to_mn in ((EVEN, even_index_to_mn), (ODD, odd_index_to_mn)):
        if label not in optics.columns:
            tables.append(None)
            continue
        tables.append(np.stack([_phase(list(v), index_to_mn, rho, theta) for v in optics[label]]))
    even, odd = tables
    even = np.zeros((0, 1, 1)) if even is None else even
    odd = np.zeros((0, 1, 1), np.complex64) if odd is None else (np.cos(odd) + 1j * np.sin(odd)).astype(np.complex64)
    return even, odd
