"""The weighting that one tomogram's tilt images share: dose weights and their frequency ranges, noise whitening,
aberrations and the CTF switches, built once per tomogram for the kernels.

Shared by relion_tomo_subtomo and relion_tomo_reconstruct_particle: the per-tomogram set-up of
``SubtomoProgram::processTomograms`` and ``ReconstructParticleProgram::processTomograms``
(src/jaz/tomography/programs/), i.e. ``Damage::weightStack_GG``, ``Tomogram::findDoseXRanges``,
``Tomogram::computeNoiseWeight`` and the ``AberrationsCache`` tables.
"""
import numpy as np

from .dose import dose_weights, dose_x_ranges
from ..project.tables import first_non_finite
from ..runtime.errors import RelionPyError
from .noise import noise_weights
from ..kernels.tomography.extraction import TiltWeighting


def tilt_weighting(tomogram, box, binning, aberrations, ctf, whiten, threads, cutoff_fraction=None,
                   zero_beyond_x_ranges=False, invert_contrast=True, post_scale=1.0, float32_ctf=False):
    """The :class:`~relion_py.kernels.tomography.extraction.TiltWeighting` of ``tomogram`` for ``box``-px
    images binned by ``binning``.

    aberrations:     (even γ offsets, odd phase factors) of :func:`~relion_py.tomography.aberrations.aberration_tables`
                     (per run: each program has its own pixel-size quirk); the even ones act through the CTF only
    ctf:             premultiply by CTF × dose
    whiten:          compute the noise whitening weights (``threads`` FFT workers)
    cutoff_fraction: if given, the dose weights' x ranges (``--cutoff_fract``), which also need the dose weights
                     when ``ctf`` is off; ``zero_beyond_x_ranges`` applies them to the weighted spectra too
    invert_contrast: sign -1 (RELION's default; ``--no_ic`` gives +1)
    post_scale:      the data are divided by it at the end (``--stack2d``: the binning once more)
    float32_ctf:     relion_tomo_reconstruct_particle's float32 c and c·c
    """
    pixel_size = tomogram.pixel_size * binning          # nominal binned pixel size of the CTF and dose
    need_dose = ctf or cutoff_fraction is not None
    dose = (dose_weights(tomogram.dose, box, pixel_size, tomogram.bfactor_per_dose) if need_dose
            else np.zeros((0, 1, 1), np.float32))
    bad = first_non_finite(dose)
    if bad is not None:                                 # exp of a hugely negative pre-exposure
        f = bad[0]
        raise RelionPyError(f"tilt series {tomogram.name}, frame {f} (row {f + 1}): its dose weights overflow "
                            f"(rlnMicrographPreExposure {tomogram.dose[f]:g} e/A^2)")
    x_ranges = (dose_x_ranges(dose, cutoff_fraction) if cutoff_fraction is not None
                else np.zeros((0, 0), np.int64))
    noise = noise_weights(tomogram.images, box, binning, threads) if whiten else np.zeros((0, 1, 1), np.float32)
    even_gamma, odd_phase = aberrations
    if not ctf:
        even_gamma = np.zeros((0, 1, 1))
    # Python scalars of fixed types: one compiled specialisation for every tomogram and program
    return TiltWeighting(box=int(box), binning=float(binning), pixel_size=float(pixel_size),
                         optics=np.array([tomogram.voltage, tomogram.cs, tomogram.q0], np.float64),
                         sign=-1.0 if invert_contrast else 1.0, do_ctf=bool(ctf), dose=dose, x_ranges=x_ranges,
                         zero_beyond_x_ranges=bool(zero_beyond_x_ranges), even_gamma=even_gamma, odd_phase=odd_phase,
                         noise=noise, post_scale=float(post_scale), float32_ctf=bool(float32_ctf))
