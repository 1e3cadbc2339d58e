"""Per-particle, per-tilt 2-D image processing of tomographic extraction: Fourier cropping, sub-pixel
re-centring, CTF × dose premultiplication, aberration and whitening weights, circular masking.

These kernels work on stacks of tilt images ("items": one visible frame of one particle), serially: the
callers run one particle per thread (``relion_py.runtime.parallel``). FFTs are FFTW plans made by the caller
(``relion_py.runtime.fftw_plans.RealFFT``); :func:`stack2d_images` executes them itself, so that each tilt image goes
from its window to its finished 2-D image while it is in the core's cache.
"""
import functools
import math
from collections import namedtuple

import numpy as np

from .._jit import njit
from ..ctf import CTF_MIN_ABS, astigmatism_form, ctf_constants
from ..fastmath import sin_vectorisable, sincos_vectorisable
from ..fftw_execute import execute_item
from .windows import _gather_clamped_windows

TiltWeighting = namedtuple("TiltWeighting", [
    "box", "binning", "pixel_size", "optics", "sign", "do_ctf", "dose", "x_ranges", "zero_beyond_x_ranges",
    "even_gamma", "odd_phase", "noise", "post_scale", "float32_ctf"])
TiltWeighting.__doc__ = """How the 2-D spectra of one tomogram's tilt images are weighted: what every particle of the
tomogram shares (built by ``relion_py.tomography.tilt_weighting.tilt_weighting``). Compiled kernels take it as
it is (a Numba named tuple); its scalars are always Python float/bool/int and its arrays always of the dtypes
below, C-contiguous, so that every tomogram and program shares one compiled specialisation.

box:        s2D, the output box (px); its half grid is that of the tables below
binning:    the nominal binning factor (the spectra are divided by it if != 1)
pixel_size: binned pixel size (Å/px) of the CTF frequencies
optics:     (3,) float64 (kV, Cs mm, Q0)
sign:       -1.0 to invert the contrast, else 1.0
do_ctf:     premultiply by CTF × dose (else the data are only shifted and signed, and the weight is 1)
dose:       (fc, s2D, s2D//2+1) float32 dose weights per frame (``Damage::weightStack_GG``) or (0, 1, 1)
x_ranges:   (fc, s2D) int64 L(y, f) of ``Tomogram::findDoseXRanges`` or (0, 0)
zero_beyond_x_ranges: with do_ctf, data and weight are 0 for x >= L(y, f) (relion_tomo_reconstruct_particle)
even_gamma: (g, s2D, sh) float64 γ offsets per optics group or (0, 1, 1)
odd_phase:  (g, s2D, sh) complex64 phase factors per optics group or (0, 1, 1)
noise:      (fc, s2D, sh) float32 whitening weights per frame or (0, 1, 1)
post_scale: the data are divided by it at the end if != 1 (``--stack2d``'s second /bin)
float32_ctf: form c = sign·CTF·dose and the weight c·c in float32, as relion_tomo_reconstruct_particle does
            (else c in double, weight float(c²), as relion_tomo_subtomo)
"""


@njit
def _weight_spectra(spectra, weighting, shifts, frames, groups, ctf_params, decentre, out, out_weights):
    binning, pixel_size, sign, do_ctf = weighting.binning, weighting.pixel_size, weighting.sign, weighting.do_ctf
    ctf_optics, dose_w, x_ranges = weighting.optics, weighting.dose, weighting.x_ranges
    even_gamma, odd_phase, noise_w = weighting.even_gamma, weighting.odd_phase, weighting.noise
    post_scale, float32_c = weighting.post_scale, weighting.float32_ctf
    n, s0 = spectra.shape[0], spectra.shape[1]
    s = out.shape[1]
    sh = out.shape[2]
    bin_scale = np.float32(binning)
    inv_as = 1.0 / (s * pixel_size)
    has_even, has_odd, has_noise = even_gamma.shape[0] > 0, odd_phase.shape[0] > 0, noise_w.shape[0] > 0
    has_ranges = do_ctf and weighting.zero_beyond_x_ranges and x_ranges.shape[0] > 0
    # per-row factors, each filled by its own branch-free (vectorisable) loop
    ramp_c = np.empty(sh)
    ramp_s = np.empty(sh)
    env_x = np.empty(sh)
    row_c = np.empty(s)
    row_s = np.empty(s)
    env_row = np.empty(s)
    no_offset = np.zeros(sh)
    c_row = np.empty(sh)
    phase_re = np.empty(sh, np.float32)
    phase_im = np.empty(sh, np.float32)
    factor = np.empty(sh, np.float32)
    weight = np.empty(sh, np.float32)
    row = np.empty(sh, np.complex64)
    for i in range(n):
        f = frames[i]
        g = groups[i]
        tx, ty = shifts[i, 0], shifts[i, 1]
        k1, k2, k3, k4, k5 = ctf_constants(ctf_optics[0], ctf_optics[1], ctf_optics[2], ctf_params[i, 3],
                                           ctf_params[i, 4])
        axx, axy, ayy = astigmatism_form(ctf_params[i, 0], ctf_params[i, 1], ctf_params[i, 2])
        scale = ctf_params[i, 5]
        # exp(2πi(a + b)) = exp(2πi a)·exp(2πi b) and exp(K4(X² + Y²)) = exp(K4 X²)·exp(K4 Y²), in double:
        # RELION's per-sample values up to double round-off, with one transcendental per sample (the sine)
        for x in range(sh):
            ramp_s[x], ramp_c[x] = sincos_vectorisable(2.0 * math.pi * (tx * x / s))
        for y in range(s):
            ky = y if y < s // 2 else y - s
            row_s[y], row_c[y] = sincos_vectorisable(2.0 * math.pi * (ty * ky / s))
        if k4 != 0.0:                                      # B-factor envelope (exp(0) = 1 without one)
            for x in range(sh):
                env_x[x] = math.exp(k4 * ((x * inv_as) * (x * inv_as)))
            for y in range(s):
                fy = (y if y < s // 2 else y - s) * inv_as
                env_row[y] = math.exp(k4 * (fy * fy))
        else:
            env_x[:] = 1.0
            env_row[:] = 1.0
        for y in range(s):
            ky = y if y < s // 2 else y - s
            ysrc = y if y < s // 2 else y - s + s0          # Fourier crop: keep the low frequencies
            cy = row_c[y]
            sy = row_s[y]
            fy = ky * inv_as
            env_y = env_row[y]
            x_end = sh
            if has_ranges:                                 # frequencies beyond the dose cut-off are zeroed
                x_end = min(sh, x_ranges[f, y])
                for x in range(x_end, sh):
                    out[i, y, x] = 0
                    out_weights[i, y, x] = 0
            if do_ctf:
                # CTF × dose per sample (``CTF::draw`` stores the CTF as float), thanks to sin_vectorisable
                offset = even_gamma[g, y] if has_even else no_offset
                for x in range(x_end):
                    fx = x * inv_as
                    u2 = fx * fx + fy * fy
                    gamma = (k1 * (axx * fx * fx + 2.0 * axy * fx * fy + ayy * fy * fy) + k2 * u2 * u2 - k5 - k3
                             + offset[x])
                    ctf = -sin_vectorisable(gamma) * (env_x[x] * env_y) * scale
                    ctf = (CTF_MIN_ABS if ctf >= 0.0 else -CTF_MIN_ABS) if abs(ctf) < CTF_MIN_ABS else ctf
                    c_row[x] = np.float64(np.float32(ctf)) * np.float64(dose_w[f, y, x])
            # the shift's phase factor exp(2πi t·k/s), rounded to complex float
            for x in range(x_end):
                phase_re[x] = np.float32(ramp_c[x] * cy - ramp_s[x] * sy)
                phase_im[x] = np.float32(ramp_s[x] * cy + ramp_c[x] * sy)
            # the real factor: float(sign·c) (data) and float(c²) or float(c)² (weight), times the signs
            # (-1)^(x+y) of the source square that was not ifftshift-ed and, if decentring, of the output
            parity = ysrc & 1
            row_sign = 1 - 2 * ((parity + y) & 1)
            for x in range(x_end):
                flip = np.float32(row_sign if decentre else 1 - 2 * ((x + parity) & 1))
                if do_ctf:
                    cf = np.float32(sign * c_row[x])
                    factor[x] = cf * flip
                    weight[x] = cf * cf if float32_c else np.float32(c_row[x] * c_row[x])
                else:
                    factor[x] = np.float32(sign) * flip
                    weight[x] = 1.0
            for x in range(x_end):
                row[x] = spectra[i, ysrc, x]
            # divisions by a real, part by part (what Numba's complex division gives for an imaginary part
            # of 0, without its branches)
            if binning != 1.0:                             # one factor of bin, not bin² (QUIRK)
                for x in range(x_end):
                    row[x] = np.complex64(complex(row[x].real / bin_scale, row[x].imag / bin_scale))
            for x in range(x_end):
                v = row[x]
                re = v.real * phase_re[x] - v.imag * phase_im[x]
                im = v.imag * phase_re[x] + v.real * phase_im[x]
                row[x] = np.complex64(complex(re * factor[x], im * factor[x]))
            if has_odd:                                    # × conj(P)
                for x in range(x_end):
                    v = row[x]
                    p = odd_phase[g, y, x]
                    row[x] = np.complex64(complex(v.real * p.real + v.imag * p.imag, v.imag * p.real - v.real * p.imag))
            if has_noise:
                for x in range(x_end):
                    row[x] = row[x] * noise_w[f, y, x]
                    weight[x] = weight[x] * noise_w[f, y, x]
            if post_scale != 1.0:
                post = np.float32(post_scale)
                for x in range(x_end):
                    row[x] = np.complex64(complex(row[x].real / post, row[x].imag / post))
            for x in range(x_end):
                out[i, y, x] = row[x]
                out_weights[i, y, x] = weight[x]


def weight_spectra(spectra, weighting, shifts, frames, groups, ctf_params, decentre, out=None, out_weights=None):
    """From the spectra of the unbinned squares to the weighted, binned, re-centred 2-D spectra.

    Mirrors, per tilt image: ``Resampling::FourierCrop_fftwHalfStack`` (crop, /bin), ``shiftStack``
    (phase ramp exp(+2πi t·k/s)), the CTF × dose premultiplication of ``SubtomoProgram::processTomograms``
    (``CTF::draw`` × ``Damage`` weights, data × float(sign·c), weight float(c²)), odd-aberration
    correction (× conj(P)), whitening (× NW), the stack2d /bin, and optionally the (-1)^(x+y) factor of a
    decentred inverse FFT.

    spectra:    (n, s0, s0//2+1) complex64, rfft2 (ortho) of the (not ifftshift-ed) unbinned squares
    weighting:  the tomogram's :class:`TiltWeighting`
    shifts:     (n, 2) float64, t = (pos - s2D/2) in binned px
    frames:     (n,) int64, frame of each item (rows of the dose, x-range and noise tables)
    groups:     (n,) int64, optics group row of each item (rows of the aberration tables)
    ctf_params: (n, 6) float64 per item: defocus U, V (Å, depth-corrected), astigmatism angle (deg),
                B-factor (Å²), phase shift (deg), scale
    decentre:   multiply by (-1)^(x+y), for a decentred inverse FFT
    out, out_weights: optional arrays to write the results to (else allocated); must not overlap spectra
    Returns (data (n, s2D, s2D//2+1) complex64, weights (n, s2D, s2D//2+1) float32).
    """
    n = spectra.shape[0]
    size = weighting.box
    sh = size // 2 + 1
    out = np.empty((n, size, sh), np.complex64) if out is None else out
    out_weights = np.empty((n, size, sh), np.float32) if out_weights is None else out_weights
    if out.shape != (n, size, sh) or out_weights.shape != (n, size, sh):
        raise ValueError(f"weight_spectra: output arrays must be {(n, size, sh)}")
    if n:
        _weight_spectra(spectra, weighting, shifts, frames, groups, ctf_params, bool(decentre), out, out_weights)
    return out, out_weights


@njit
def _circle_tables(h, w, boundary, falloff):
    """Per-pixel circle mask, outside flag and gridding pre-correction (RELION's formulas, in double)."""
    mx = float(w // 2)
    my = float(h // 2)
    radius = mx - boundary
    mask = np.empty((h, w))
    outside = np.empty((h, w), np.bool_)
    grid = np.empty((h, w))
    for y in range(h):
        for x in range(w):
            r = math.sqrt((x - mx) ** 2 + (y - my) ** 2)
            outside[y, x] = r > radius
            if r < radius - falloff:
                mask[y, x] = 1.0
            elif r < radius:
                mask[y, x] = 0.5 - 0.5 * math.cos(math.pi * (radius - r) / falloff)
            else:
                mask[y, x] = 0.0
            if r < 1.0:
                grid[y, x] = 1.0
            elif r < radius - 1.0:
                grid[y, x] = r / math.sin(math.pi * r / radius)
            else:
                grid[y, x] = 0.0
    return mask, outside, grid


@njit
def _crop_circle(images, mask, outside, grid, do_crop, grid_precorrect):
    n, h, w = images.shape
    for i in range(n):
        if do_crop:
            total = 0.0
            count = 0
            for y in range(h):
                for x in range(w):
                    if outside[y, x]:
                        total += images[i, y, x]
                        count += 1
            mean_out = total / count if count > 0 else 0.0
            for y in range(h):
                for x in range(w):
                    images[i, y, x] = np.float32(mask[y, x] * (float(images[i, y, x]) - mean_out))
        if grid_precorrect:
            for y in range(h):
                for x in range(w):
                    images[i, y, x] = np.float32(images[i, y, x] * grid[y, x])


#: bytes per pixel of :func:`circle_tables`: the mask and the gridding pre-correction (float64), the outside flag
CIRCLE_TABLE_BYTES = 8 + 8 + 1


@functools.lru_cache(maxsize=16)
def circle_tables(h, w, boundary, falloff):
    """The mask, outside flags and gridding pre-correction of an h x w image, the same for every image:
    evaluated once per size (read-only)."""
    tables = _circle_tables(h, w, boundary, falloff)
    for t in tables:
        t.flags.writeable = False
    return tables


def _precrop_tables(s0, circle_precrop):
    """The circle tables of the s0 x s0 unbinned square for the circle pre-crop, or (without it) empty tables of
    the same types: CIRCLE_TABLE_BYTES a pixel that most runs never read (71 MB for a 2048-px square)."""
    return circle_tables(s0, s0, 0.0, 5.0) if circle_precrop else circle_tables(0, 0, 0.0, 5.0)


def crop_circle(images, boundary, falloff=5.0, do_crop=True, grid_precorrect=False):
    """Circular soft mask, in place: radius w/2 - boundary, cosine fall-off of ``falloff`` px, after
    subtracting the mean of the pixels outside the radius; optionally the 2-D gridding pre-correction.

    Mirrors ``TomoExtraction::cropCircle`` and ``TomoExtraction::griddingPreCorrect``
    (src/jaz/tomography/extraction.h). images: (n, h, w) float32, modified in place.
    """
    if images.shape[0]:
        mask, outside, grid = circle_tables(images.shape[1], images.shape[2], float(boundary), float(falloff))
        _crop_circle(images, mask, outside, grid, bool(do_crop), bool(grid_precorrect))
    return images


@njit(inline="always")
def _cut_window(source, slices, origins, gathered, i, square):
    """Item i's unbinned square in ``square``'s real buffer: cut here from ``source`` into slot 0 (which stays in
    cache), or, with ``gathered``, already in slot i. Returns the slot."""
    if gathered:
        return i
    _gather_clamped_windows(source, slices[i:i + 1], origins[i:i + 1], square.real)
    return 0


@njit(inline="always")
def _window_spectrum(square, slot, circle_precrop, precrop):
    """The circle pre-crop (if asked) and the forward FFT of the square in ``slot``."""
    if circle_precrop:
        _crop_circle(square.real[slot:slot + 1], precrop[0], precrop[1], precrop[2], True, False)
    execute_item(square.forward, slot, square.spectra_flat, square.norm)


#: What :func:`extract_weighted_spectra` and :func:`stack2d_images` found not finite in an item (NaN or Inf): the
#: pixels of its window or its result (pixel values near float32's limit overflow), or its CTF × dose weights
#: (absurd CTF or dose values overflow: a defocus of 1e30 Å, say)
NON_FINITE_PIXELS = 1
NON_FINITE_WEIGHTS = 2


@njit(inline="always")
def _all_finite(image):
    """False if a value of the float32 (or complex64) image is NaN or Inf (all exponent bits set); a branch-free
    maximum."""
    bits = image.reshape(-1).view(np.uint32)
    top = np.uint32(0)
    for k in range(bits.size):
        top = max(top, bits[k] & np.uint32(0x7F800000))
    return top != np.uint32(0x7F800000)


@njit(inline="always")
def _weighted_item(source, slices, origins, gathered, i, square, circle_precrop, precrop, weighting, shifts, frames,
                   groups, ctf_params, decentre, out, out_weights):
    """Item i's window → (circle pre-crop) → FFT → :func:`weight_spectra` into ``out``, ``out_weights`` (1, s, sh).
    Returns 0, or what was not finite (NON_FINITE_PIXELS: its window; NON_FINITE_WEIGHTS: its weights)."""
    slot = _cut_window(source, slices, origins, gathered, i, square)
    if not _all_finite(square.real[slot]):
        return NON_FINITE_PIXELS
    _window_spectrum(square, slot, circle_precrop, precrop)
    _weight_spectra(square.spectra[slot:slot + 1, :, :out.shape[2]], weighting, shifts[i:i + 1], frames[i:i + 1],
                    groups[i:i + 1], ctf_params[i:i + 1], decentre, out, out_weights)
    if not _all_finite(out_weights[0]):
        return NON_FINITE_WEIGHTS
    return 0


@njit
def _extract_stack2d(source, slices, origins, gathered, weighting, shifts, frames, groups, ctf_params, square, box,
                     scratch_weights, circle_precrop, precrop, crop, do_crop, grid_precorrect, out):
    lo = (box.real.shape[1] - out.shape[1]) // 2
    hi = lo + out.shape[1]
    for i in range(frames.shape[0]):
        found = _weighted_item(source, slices, origins, gathered, i, square, circle_precrop, precrop, weighting,
                               shifts, frames, groups, ctf_params, True, box.spectra[:1], scratch_weights)
        if found:
            return i, found
        execute_item(box.backward, 0, box.real_flat, box.norm)
        image = box.real[:1]
        if do_crop or grid_precorrect:
            _crop_circle(image, crop[0], crop[1], crop[2], do_crop, grid_precorrect)
        for y in range(lo, hi):
            for x in range(lo, hi):
                out[i, y - lo, x - lo] = image[0, y, x]
        if not _all_finite(out[i]):
            return i, NON_FINITE_PIXELS
    return -1, 0


@njit
def _extract_weighted_spectra(source, slices, origins, gathered, weighting, shifts, frames, groups, ctf_params, square,
                              circle_precrop, precrop, decentre, out, out_weights):
    for i in range(frames.shape[0]):
        found = _weighted_item(source, slices, origins, gathered, i, square, circle_precrop, precrop, weighting,
                               shifts, frames, groups, ctf_params, decentre, out[i:i + 1], out_weights[i:i + 1])
        if found:
            return i, found
        if not _all_finite(out[i]):
            return i, NON_FINITE_PIXELS
    return -1, 0


def extract_weighted_spectra(source, slices, origins, gathered, weighting, shifts, frames, groups, ctf_params, square,
                             circle_precrop, decentre, out, out_weights):
    """The weighted 2-D spectra of one particle's n tilt items, one tilt image at a time (so that it stays in the
    core's cache): window → (circle pre-crop) → FFT → :func:`weight_spectra`.

    Mirrors, per tilt image, ``TomoExtraction::extractAt2D_Fourier`` (``extractSquares``, ``cropCircle`` when
    asked, the FFT) and the weighting of :func:`weight_spectra`.
    source, slices, origins, gathered, square: as for :func:`stack2d_images`
    weighting, shifts, frames, groups, ctf_params, decentre: as for :func:`weight_spectra` (n items)
    out, out_weights: (n, s2D, s2D//2+1) complex64 / float32, written (must not overlap ``square``)
    Returns (item, what): the first item whose window pixels (what = NON_FINITE_PIXELS) or weights
    (NON_FINITE_WEIGHTS) are not all finite, the following items not written; (-1, 0) if all are.
    """
    s0, size = square.real.shape[1], weighting.box
    if out.shape != (len(frames), size, size // 2 + 1) or out_weights.shape != out.shape:
        raise ValueError(f"extract_weighted_spectra: output arrays must be {(len(frames), size, size // 2 + 1)}")
    if not len(frames):
        return -1, 0
    return _extract_weighted_spectra(source, np.ascontiguousarray(slices, np.int64),
                                     np.ascontiguousarray(origins, np.int64), bool(gathered), weighting, shifts,
                                     frames, groups, ctf_params, square, bool(circle_precrop),
                                     _precrop_tables(s0, circle_precrop), bool(decentre), out, out_weights)


def stack2d_images(source, slices, origins, gathered, weighting, shifts, frames, groups, ctf_params, square, box, out,
                   circle_precrop, boundary, do_crop=True, grid_precorrect=False):
    """The finished 2-D images of ``--stack2d`` for one particle's n tilt items, one tilt image at a time
    (so that it stays in the core's cache): window → (circle pre-crop) → FFT → :func:`weight_spectra`
    (decentred) → inverse FFT → :func:`crop_circle` → the central ``out`` square.

    Mirrors, per tilt image, ``TomoExtraction::extractAt2D_Fourier`` and the 2-D branch of
    ``SubtomoProgram::processTomograms`` (src/jaz/tomography/programs/subtomo.cpp).
    source:    (n_slices, H, W) float32 tilt images; ``slices`` (n,) int64 and ``origins`` (n, 2) int64 place
               each item's unbinned square as in :func:`~relion_py.kernels.tomography.windows.gather_clamped_windows`;
               or, with ``gathered``, the squares are already in ``square``'s real buffer (source unused)
    weighting, shifts, frames, groups, ctf_params: as for :func:`weight_spectra` (n items)
    square:    :class:`~relion_py.kernels.fftw_execute.RealFFTPlans` of the s0 x s0 unbinned squares (forward;
               capacity >= n if gathered)
    box:       :class:`~relion_py.kernels.fftw_execute.RealFFTPlans` of the binned s x s box (backward; capacity >= 1)
    out:       (n, crop, crop) float32, written; boundary: (s - crop) / 2
    Returns (item, what) as :func:`extract_weighted_spectra`.
    """
    s0, s = square.real.shape[1], box.real.shape[1]
    if out.shape[1:] != (s - 2 * boundary,) * 2:
        raise ValueError(f"stack2d_images: out must be (n, {s - 2 * boundary}, {s - 2 * boundary})")
    if not len(out):
        return -1, 0
    weights = np.empty((1, s, s // 2 + 1), np.float32)
    return _extract_stack2d(source, np.ascontiguousarray(slices, np.int64), np.ascontiguousarray(origins, np.int64),
                            bool(gathered), weighting, shifts, frames, groups, ctf_params, square, box, weights,
                            bool(circle_precrop), _precrop_tables(s0, circle_precrop),
                            circle_tables(s, s, float(boundary), 5.0), bool(do_crop), bool(grid_precorrect), out)
