"""Kernels and shared numerics against the spec's formulas, written out independently in plain numpy."""
import math

import numpy as np
import pytest

from relion_py.tomography.dose import dose_weights, dose_x_ranges
from relion_py.tomography.half_grid import half_grid, signed_index
from relion_py.tomography.geometry import euler_to_matrix, matrix_to_euler, tilt_projection_matrices
from relion_py.kernels.ctf import astigmatism_form, ctf_constants, ctf_value
from relion_py.kernels.tomography.extraction import (NON_FINITE_PIXELS, NON_FINITE_WEIGHTS, TiltWeighting, crop_circle,
                                                     extract_weighted_spectra, weight_spectra)
from relion_py.runtime.fftw_plans import RealFFT
from relion_py.kernels.tomography.windows import gather_clamped_windows
from relion_py.tomography.noise import radial_average

rng = np.random.default_rng(7)


def spec_ctf(fx, fy, kv, cs, q0, du, dv, phi_deg, bfac, scale, phase_deg):
    """CTF::getCTF's γ (src/ctf.h), in its bracketed form."""
    v = kv * 1e3
    lam = 12.2643247 / math.sqrt(v * (1 + v * 0.978466e-6))
    phi = math.radians(phi_deg)
    u2 = fx * fx + fy * fy
    gamma = (-math.pi * lam * (du * (fx * math.cos(phi) + fy * math.sin(phi)) ** 2
                               + dv * (-fx * math.sin(phi) + fy * math.cos(phi)) ** 2)
             + math.pi / 2 * cs * 1e7 * lam ** 3 * u2 * u2 - math.radians(phase_deg)
             - math.atan(q0 / math.sqrt(1 - q0 * q0)))
    return -math.sin(gamma) * math.exp(-bfac / 4 * u2) * scale


@pytest.mark.parametrize("fx,fy", [(0.0, 0.0), (0.01, -0.02), (0.1, 0.05), (-0.07, 0.11)])
def test_ctf_matches_spec_formula(fx, fy):
    kv, cs, q0, du, dv, phi, bfac, scale, ps = 300.0, 2.7, 0.1, 25000.0, 24000.0, 33.0, 50.0, 0.9, 10.0
    k = ctf_constants(kv, cs, q0, bfac, ps)
    a = astigmatism_form(du, dv, phi)
    got = ctf_value(fx, fy, *k, *a, scale, 0.0)
    assert got == pytest.approx(spec_ctf(fx, fy, kv, cs, q0, du, dv, phi, bfac, scale, ps), rel=1e-12, abs=1e-8)


def test_ctf_clamps_to_signed_minimum():
    k = ctf_constants(300.0, 2.7, 0.0, 0.0, 0.0)  # Q0 = 0: CTF(0) = 0 → clamped to +1e-8
    assert ctf_value(0.0, 0.0, *k, *astigmatism_form(1e4, 1e4, 0.0), 1.0, 0.0) == 1e-8


def test_signed_index_puts_nyquist_negative():
    assert list(signed_index(6)) == [0, 1, 2, -3, -2, -1]


def test_dose_weights_follow_grant_grigorieff():
    box, ps, dose = 16, 4.0, np.array([0.0, 10.0, 50.0])
    w = dose_weights(dose, box, ps)
    kx, ky = half_grid(box)
    k = np.sqrt(kx ** 2 + ky ** 2) / (box * ps)
    with np.errstate(divide="ignore"):
        expect = np.exp(-0.5 * dose[:, None, None] / (0.245 * k ** -1.665 + 2.81))
    np.testing.assert_allclose(w, expect.astype(np.float32), rtol=1e-6)
    assert np.all(w[:, 0, 0] == 1.0) and np.all(w[0] == 1.0)


def test_dose_weights_with_bfactor_per_dose():
    w = dose_weights(np.array([20.0]), 8, 5.0, bfactor_per_dose=4.0)
    kx, ky = half_grid(8)
    k2 = (kx ** 2 + ky ** 2) / (8 * 5.0) ** 2
    np.testing.assert_allclose(w[0], np.exp(-4.0 * 20.0 / 4 * k2), rtol=1e-6)


def test_dose_x_ranges_follow_the_loop_definition():
    w = dose_weights(np.array([0.0, 30.0, 120.0]), 20, 2.0)
    got = dose_x_ranges(w, 0.01)
    s, sh = 20, 11
    for f in range(3):
        for y in range(s):
            ky = y if y < s // 2 else y - s
            xmax = math.sqrt((s * s) // 4 - ky * ky)
            expect, x = 0, 0
            while x < sh and x <= xmax:
                if w[f, y, x] > 0.01:
                    expect = x + 1
                x += 1
            assert got[f, y] == expect


def test_gather_clamped_windows_replicates_edges():
    stack = rng.normal(size=(3, 20, 30)).astype(np.float32)
    slices = np.array([2, 0, 1])
    origins = np.array([[-5, -3], [25, 15], [4, 6]])
    out = np.empty((3, 8, 8), np.float32)
    gather_clamped_windows(stack, slices, origins, out)
    for i, (s, (x0, y0)) in enumerate(zip(slices, origins)):
        ys = np.clip(np.arange(8) + y0, 0, 19)
        xs = np.clip(np.arange(8) + x0, 0, 29)
        np.testing.assert_array_equal(out[i], stack[s][np.ix_(ys, xs)])


def test_crop_circle_matches_spec():
    img = rng.normal(size=(2, 24, 24)).astype(np.float32)
    got = crop_circle(img.copy(), boundary=4, falloff=5.0)
    mx = 12.0
    y, x = np.mgrid[:24, :24]
    r = np.sqrt((x - mx) ** 2 + (y - mx) ** 2)
    radius = mx - 4
    mask = np.where(r < radius - 5, 1.0, np.where(r < radius, 0.5 - 0.5 * np.cos(np.pi * (radius - r) / 5), 0.0))
    for i in range(2):
        mean_out = img[i].astype(np.float64)[r > radius].mean()
        np.testing.assert_allclose(got[i], (mask * (img[i] - mean_out)).astype(np.float32), atol=1e-6)


def reference_weighting(square, binning, box, shift, ctf_args, dose_w, sign):
    """One item through extractAt2D_Fourier and the CTF × dose weighting of processTomograms (docs/extraction.md
    §3) in plain numpy (complex128)."""
    s0 = square.shape[0]
    f = np.fft.rfft2(np.fft.ifftshift(square), norm="ortho")
    if binning != 1:
        rows = np.r_[0:box // 2, s0 - box // 2:s0]
        f = f[rows, :box // 2 + 1] / binning
    kx, ky = half_grid(box)
    f = f * np.exp(2j * np.pi * (shift[0] * kx + shift[1] * ky) / box)
    kv, cs, q0, du, dv, phi, bfac, scale, phase, ps = ctf_args
    ctf = np.vectorize(lambda a, b: spec_ctf(a, b, kv, cs, q0, du, dv, phi, bfac, scale, phase))(
        kx / (box * ps), ky / (box * ps))
    return f * sign * ctf * dose_w


def ctf_dose_weighting(box, binning, pixel_size, dose_w):
    """A TiltWeighting with CTF × dose and nothing else (300 kV, Cs 2.7 mm, Q0 0.07, contrast inverted)."""
    return TiltWeighting(
        box=box, binning=binning, pixel_size=pixel_size, optics=np.array([300.0, 2.7, 0.07]), sign=-1.0, do_ctf=True,
        dose=dose_w, x_ranges=np.zeros((0, 0), np.int64), zero_beyond_x_ranges=False, even_gamma=np.zeros((0, 1, 1)),
        odd_phase=np.zeros((0, 1, 1), np.complex64), noise=np.zeros((0, 1, 1), np.float32), post_scale=1.0,
        float32_ctf=False)


@pytest.mark.parametrize("binning,square,box", [(1.0, 32, 32), (2.0, 48, 24)])
def test_weight_spectra_matches_numpy_reference(binning, square, box):
    img = rng.normal(size=(square, square)).astype(np.float32)
    shift = np.array([0.3, -0.45])
    ctf_args = (300.0, 2.7, 0.07, 21000.0, 20500.0, 12.0, 20.0, 1.0, 5.0, 4.0 * binning)
    dose_w = dose_weights(np.array([12.0]), box, ctf_args[-1])
    spectrum = np.fft.rfft2(img, norm="ortho").astype(np.complex64)[None]
    weighting = ctf_dose_weighting(box, binning, ctf_args[-1], dose_w)
    data, weights = weight_spectra(spectrum, weighting, shift[None], np.zeros(1, np.int64), np.zeros(1, np.int64),
                                   np.array([[21000.0, 20500.0, 12.0, 20.0, 5.0, 1.0]]), False)
    expect = reference_weighting(img.astype(np.float64), binning, box, shift, ctf_args, dose_w[0], -1.0)
    assert np.abs(data[0] - expect).max() <= 1e-5 * np.abs(expect).max()
    kx, ky = half_grid(box)
    ctf = np.vectorize(lambda a, b: spec_ctf(a, b, *ctf_args[:-1]))(kx / (box * ctf_args[-1]), ky / (box * ctf_args[-1]))
    np.testing.assert_allclose(weights[0], (ctf * dose_w[0]) ** 2, rtol=1e-5, atol=1e-9)


def _items_of_stack(n, square, box, binning):
    """A stack of 3 tilt images with n windows of square px (some past the edges), their weighting (5 frames'
    dose weights) and per-item parameters."""
    stack = rng.normal(size=(3, 70, 90)).astype(np.float32)
    slices = np.array([2, 0, 1, 1, 0])[:n]
    origins = np.array([[-5, -3], [60, 30], [10, 6], [40, 20], [20, 40]])[:n]
    dose_w = dose_weights(np.array([3.0, 9.0, 15.0]), box, 4.0 * binning)
    shifts = rng.uniform(-0.5, 0.5, size=(n, 2))
    ctf_params = np.column_stack([rng.uniform(15000, 25000, (n, 2)), rng.uniform(0, 90, (n, 1)), np.zeros((n, 1)),
                                  np.zeros((n, 1)), np.ones((n, 1))])
    return stack, slices, origins, ctf_dose_weighting(box, binning, 4.0 * binning, dose_w), shifts, ctf_params


@pytest.mark.parametrize("binning,square,box,precrop,gathered", [(1.0, 32, 32, True, False), (2.0, 48, 24, True, True),
                                                                 (2.0, 48, 24, False, False)])
def test_extract_weighted_spectra_is_window_crop_fft_weight(binning, square, box, precrop, gathered):
    """The fused per-tilt kernel gives the bits of its steps run one after the other on the whole stack."""
    n = 5
    stack, slices, origins, weighting, shifts, ctf_params = _items_of_stack(n, square, box, binning)
    frames, groups = slices.copy(), np.zeros(n, np.int64)
    fft = RealFFT(n, (square, square), columns=box // 2 + 1, inverse=False)
    gather_clamped_windows(stack, slices, origins, fft.real[:n])
    if precrop:
        crop_circle(fft.real[:n], boundary=0)
    want = weight_spectra(fft.forward(n), weighting, shifts, frames, groups, ctf_params, True)
    fft = RealFFT(n, (square, square), columns=box // 2 + 1, inverse=False)
    source = stack
    if gathered:                                  # the windows cut by a reader first
        gather_clamped_windows(stack, slices, origins, fft.real[:n])
        source, slices = fft.real, np.zeros(n, np.int64)
    got = (np.empty_like(want[0]), np.empty_like(want[1]))
    found = extract_weighted_spectra(source, slices, origins, gathered, weighting, shifts, frames, groups, ctf_params,
                                     fft.kernel_args(), precrop, True, *got)
    assert found == (-1, 0)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_extract_weighted_spectra_names_the_first_non_finite_window(value):
    n = 5
    stack, slices, origins, weighting, shifts, ctf_params = _items_of_stack(n, 32, 32, 1.0)
    stack[1, 30, 20] = np.finfo(np.float32).max         # in the window of item 2, finite: it passes
    stack[1, 25, 41] = value                            # in the windows of items 2 and 3 (slice 1), not of 0
    fft = RealFFT(n, (32, 32), inverse=False)
    out = np.empty((n, 32, 17), np.complex64), np.empty((n, 32, 17), np.float32)
    args = (weighting, shifts, slices, np.zeros(n, np.int64), ctf_params, fft.kernel_args(), True, False, *out)
    assert extract_weighted_spectra(stack, slices, origins, False, *args) == (2, NON_FINITE_PIXELS)
    stack[1, 25, 41] = 0.0
    assert extract_weighted_spectra(stack, slices, origins, False, *args) == (-1, 0)
    ctf_params[3, 5] = 1e30                             # item 3's CTF scale: its weights c² overflow float32
    assert extract_weighted_spectra(stack, slices, origins, False, *args) == (3, NON_FINITE_WEIGHTS)


def test_projection_matrix_follows_spec():
    p = tilt_projection_matrices([1.5], [30.0], [4.0], [2.0], [-3.0], (101, 87, 41), (96, 80))[0]
    a, b, c = np.radians([1.5, 30.0, 4.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    r = rz @ ry @ rx
    point = np.array([10.0, 20.0, 5.0])
    expect = r @ (point - np.array([50, 43, 20])) + np.array([48, 40, 0]) + np.array([2.0, -3.0, 0])
    np.testing.assert_allclose(p[:3, :3] @ point + p[:3, 3], expect, atol=1e-12)


def test_euler_round_trip_and_relion_convention():
    angles = np.array([[10.0, 30.0, -50.0], [-160.0, 170.0, 5.0], [80.0, 0.0, 0.0]])
    m = euler_to_matrix(*angles.T)
    np.testing.assert_allclose(m @ np.transpose(m, (0, 2, 1)), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    # RELION's ZYZ: third row is the projection direction (sinθcosφ, sinθsinφ, cosθ)
    t, r = np.radians(30.0), np.radians(10.0)
    np.testing.assert_allclose(m[0, 2], [np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], atol=1e-12)
    back = np.stack(matrix_to_euler(m), axis=1)
    np.testing.assert_allclose(euler_to_matrix(*back.T), m, atol=1e-12)


def test_radial_average_linear_binning():
    values = np.array([1.0, 3.0, 5.0])
    radius = np.array([0.0, 1.5, 2.0])
    got = radial_average(values, radius, 3)
    # bin0: 1·1; bin1: 0.5·3; bin2: 0.5·3 + 1·5
    np.testing.assert_allclose(got, [1.0, 3.0, (1.5 + 5.0) / 1.5])


def test_vectorisable_sine_matches_libm():
    from numba import njit

    from relion_py.kernels.fastmath import sin_vectorisable, sincos_vectorisable

    @njit
    def apply(values):
        out = np.empty_like(values)
        out_s = np.empty_like(values)
        out_c = np.empty_like(values)
        for k in range(values.size):
            out[k] = sin_vectorisable(values[k])
            out_s[k], out_c[k] = sincos_vectorisable(values[k])
        return out, out_s, out_c

    x = np.concatenate([rng.uniform(-1e4, 1e4, 200_000), rng.uniform(-3, 3, 50_000), [0.0, np.pi, -np.pi / 2]])
    got, got_s, got_c = apply(x)
    assert np.abs(got - np.sin(x)).max() < 1e-15
    assert np.array_equal(got_s, got) and np.abs(got_c - np.cos(x)).max() < 1e-15
    # as a float32 (how the CTF is stored) it is libm's value except, rarely, one ulp at a rounding tie
    g32, r32 = got.astype(np.float32), np.sin(x).astype(np.float32)
    differ = (g32 != r32) & (np.abs(r32) > 1e-8)   # below 1e-8 the CTF is clamped anyway
    assert differ.mean() < 1e-4
    assert np.all(np.abs(g32[differ] - r32[differ]) <= np.spacing(np.abs(r32[differ])))
