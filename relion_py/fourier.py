"""Frequency grids of RELION's half-complex (FFTW r2c) layout."""
import numpy as np


def signed_index(n):
    """Signed frequency index of each row of an n-long axis, Nyquist NEGATIVE (RELION's jaz
    convention: ``y if y < n/2 else y - n``, integer n/2)."""
    y = np.arange(n)
    return np.where(y < n // 2, y, y - n)


def half_grid(s):
    """(kx, ky) integer frequency grids of an s x s image's half transform, shape (s, s//2+1)."""
    ky, kx = np.meshgrid(signed_index(s), np.arange(s // 2 + 1), indexing="ij")
    return kx, ky
