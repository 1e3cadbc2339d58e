"""Radiation-damage (dose) weights of each tilt and the frequency ranges they leave worth inserting.

Mirrors ``Damage::weightStack_GG`` / ``Damage::weightImage`` (src/jaz/optics/damage.cpp) and
``Tomogram::findDoseXRanges`` (src/jaz/tomography/tomogram.cpp).
"""
import numpy as np

from .half_grid import half_grid


def dose_weights(dose, box, pixel_size, bfactor_per_dose=0.0):
    """Per-frame dose weights on the half grid of a ``box``-px image of ``pixel_size`` Å/px.

    dose: (fc,) pre-exposure per frame (e/Å², rlnMicrographPreExposure).
    If ``bfactor_per_dose`` > 0: exp(-Bpe·dose·k²/4); otherwise Grant & Grigorieff (2015)'s critical
    exposure Ne(k) = 0.245·k^-1.665 + 2.81 and exp(-dose / (2·Ne)). k in 1/Å; DC weight is 1.
    Computed in double, returned float32 (fc, box, box//2+1).
    """
    kx, ky = half_grid(box)
    k = np.sqrt(kx * kx + ky * ky) / (box * pixel_size)
    dose = np.asarray(dose, dtype=np.float64)
    out = np.empty((len(dose), box, box // 2 + 1), np.float32)
    # one frame at a time: the float64 temporaries are one frame's, not the whole stack's (for a 2000-px box
    # and 40 frames, 1.3 GB)
    with np.errstate(over="ignore"):       # an absurd negative dose overflows: the caller refuses the inf weights
        if bfactor_per_dose > 0:
            for f, d in enumerate(dose):
                out[f] = np.exp(-bfactor_per_dose * d / 4.0 * k * k)
        else:
            with np.errstate(divide="ignore"):
                critical = 0.245 * k ** -1.665 + 2.81  # +inf at DC → weight 1
            for f, d in enumerate(dose):
                out[f] = np.exp(-0.5 * d / critical)
    return out


def dose_x_ranges(weights, cutoff_fraction):
    """One past the last x (per frame and row) inside the circle of radius s/2 whose dose weight exceeds
    ``cutoff_fraction``; 0 if none. weights: (fc, s, s//2+1) float32 → (fc, s) int64.

    The circle uses RELION's integer (s*s)/4 (NaN → empty row for odd s).
    """
    fc, s, sh = weights.shape
    kx, ky = half_grid(s)
    with np.errstate(invalid="ignore"):
        xmax = np.sqrt((s * s) // 4 - ky[:, 0].astype(np.float64) ** 2)
    inside = kx <= xmax[:, None]                      # NaN compares False
    last = np.empty((fc, s), np.int64)
    for f in range(fc):                               # one frame's temporaries at a time
        # RELION keeps the last qualifying x, not the first gap
        last[f] = np.where((weights[f] > cutoff_fraction) & inside, kx + 1, 0).max(axis=1)
    return last
