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


def half_to_centred_full(half):
    """Full, centred (origin at index n/2) volume from a half-grid volume of a real signal's transform.

    Mirrors ``Centering::fftwHalfToHumanFull`` (src/jaz/image/centering.h): ``fftwHalfToFftwFull`` (copy
    out[x] = h[x] and, for x > 0, out[wd-x, -y, -z] = h[x, y, z], iterating z, y, x in ascending order so
    that inside the Nyquist plane the later write wins) then ``fftwFullToHumanFull`` (out[x] = in[(x + w -
    w/2) mod w] per axis, i.e. ``fftshift`` for even sizes). Values are copied, never conjugated.

    half: (d, h, wh) real array → (d, h, 2·(wh-1)) of the same dtype.
    """
    half = np.asarray(half)
    d, h, wh = half.shape
    wd = 2 * (wh - 1)
    full = np.zeros((d, h, wd), half.dtype)
    full[:, :, :wh] = half
    zm = (d - np.arange(d)) % d
    ym = (h - np.arange(h)) % h
    # mirrored writes for 0 < x < wh - 1 land in x = wd - x >= wh, never written directly
    full[:, :, wh:] = half[np.ix_(zm, ym, np.arange(wh - 2, 0, -1))]
    if wh > 1:
        # Nyquist plane: target (z, y) is written directly at iteration (z, y) and by the mirror of source
        # (zm, ym) at iteration (zm, ym); the later of the two iterations wins
        z, y = np.meshgrid(np.arange(d), np.arange(h), indexing="ij")
        mz, my = zm[z], ym[y]
        mirror_later = (mz > z) | ((mz == z) & (my > y))
        nyq = half[:, :, wh - 1]
        full[:, :, wh - 1] = np.where(mirror_later, nyq[mz, my], nyq)
    # out[x] = in[(x + w - w/2) % w]: a roll by +w/2
    return np.roll(full, (d // 2, h // 2, wd // 2), axis=(0, 1, 2))
