"""``softMaskOutsideMap`` of RELION's src/mask.cpp."""
import math

from .._jit import njit


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
                    c = 0.5 + 0.5 * math.cos(math.pi * (radius_p - r) / width)
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
                    c = 0.5 + 0.5 * math.cos(math.pi * (radius_p - r) / width)
                    vol[k, i, j] = (1 - c) * vol[k, i, j] + c * s_bg


def soft_mask_outside_map(vol, radius=-1.0, width=3.0):
    """Replace the corners of a cube by their (cosine-weighted) mean, in place. Mirrors
    ``softMaskOutsideMap`` (src/mask.cpp) without a noise map: radius defaults to size/2, cosine edge
    ``width`` px, logical origin at size//2. vol: (n, n, n) float64."""
    if radius < 0:
        radius = vol.shape[2] / 2.
    _soft_mask_outside_map(vol, float(radius), float(width))
