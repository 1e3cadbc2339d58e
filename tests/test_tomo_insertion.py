"""The tomography kernels of relion_tomo_subtomo's 3-D output (kernels/tomography/): Fourier insertion against
a plain transcription of RELION's loops, its options, the half-grid layout, the taper."""
import numpy as np
import pytest

from relion_py.tomography.half_grid import half_to_centred_full
from relion_py.kernels.tomography.insertion_forward import insert_slices_forward
from relion_py.kernels.tomography.volume_filters import taper

rng = np.random.default_rng(11)


def spec_insertion(spectrum, weight, u, v, x_range, s3, vol, ctf, mult):
    """backprojectSlice_forward_with_multiplicity (docs/extraction.md §4), literally: one slice, float32
    accumulation in loop order."""
    s2 = spectrum.shape[0]
    sh3 = s3 // 2 + 1
    scale = np.linalg.norm(u) * np.linalg.norm(v)
    for y in range(s2):
        ky = y if y < s2 // 2 else y - s2
        for x in range(0 if y < s2 // 2 else 1, x_range[y]):
            p = x * u + ky * v
            val, w = complex(spectrum[y, x]), float(weight[y, x])
            if p[0] < 0:
                p, val = -p, val.conjugate()
            x0, y0, z0 = (int(np.floor(c)) for c in p)
            for dz in (0, 1):
                for dy in (0, 1):
                    for dx in (0, 1):
                        gx, gy, gz = x0 + dx, y0 + dy, z0 + dz
                        if gx < sh3 and -s3 // 2 <= gy < s3 // 2 and -s3 // 2 <= gz < s3 // 2:
                            iy, iz = gy % s3, gz % s3
                            m = scale * (1 - abs(p[0] - gx)) * (1 - abs(p[1] - gy)) * (1 - abs(p[2] - gz))
                            targets = [(iz, iy, gx, val)]
                            if gx == 0:
                                targets.append(((s3 - iz) % s3, (s3 - iy) % s3, 0, val.conjugate()))
                            for tz, ty, tx, tv in targets:
                                vol[tz, ty, tx] += np.complex64(complex(np.float32(m * tv.real), np.float32(m * tv.imag)))
                                ctf[tz, ty, tx] += np.float32(m * w)
                                mult[tz, ty, tx] = np.float32(float(mult[tz, ty, tx]) + m)


@pytest.mark.parametrize("s2,s3", [(16, 12), (12, 12), (10, 16), (24, 16)])
def test_insertion_kernel_matches_spec_transcription(s2, s3):
    n_items = 3
    sh2 = s2 // 2 + 1
    spectra = (rng.standard_normal((n_items, s2, sh2)) + 1j * rng.standard_normal((n_items, s2, sh2))).astype(np.complex64)
    weights = rng.random((n_items, s2, sh2)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((n_items, 3, 3)))
    axes = np.ascontiguousarray(q[:, :2, :] * (s3 / s2))
    x_ranges = rng.integers(0, sh2 + 1, size=(2, s2))
    frames = np.array([0, 1, 1])
    # two particles: items 0-1 and item 2
    data, ctf_mult = insert_slices_forward(spectra, weights, np.array([0, 2]), np.array([2, 1]), frames, axes,
                                           x_ranges, s3)
    for p, items in enumerate([(0, 1), (2,)]):
        sh3 = s3 // 2 + 1
        vol = np.zeros((s3, s3, sh3), np.complex64)
        ctf = np.zeros((s3, s3, sh3), np.float32)
        mult = np.zeros((s3, s3, sh3), np.float32)
        for i in items:
            spec_insertion(spectra[i], weights[i], axes[i, 0], axes[i, 1], x_ranges[frames[i]], s3, vol, ctf, mult)
        np.testing.assert_array_equal(data[p], vol)
        np.testing.assert_array_equal(ctf_mult[p, :s3], ctf)
        np.testing.assert_array_equal(ctf_mult[p, s3:], mult)


def test_insertion_options_centred_source_decentre_and_scale():
    s2, s3 = 12, 8
    spectra = (rng.standard_normal((2, s2, 7)) + 1j * rng.standard_normal((2, s2, 7))).astype(np.complex64)
    weights = rng.random((2, s2, 7)).astype(np.float32)
    axes = np.ascontiguousarray(np.linalg.qr(rng.standard_normal((2, 3, 3)))[0][:, :2] * (s3 / s2))
    x_ranges = np.full((1, s2), 7)
    args = (np.array([0]), np.array([2]), np.zeros(2, np.int64), axes, x_ranges, s3)
    plain, cm = insert_slices_forward(spectra, weights, *args)
    ky, kx = np.meshgrid(np.arange(s2), np.arange(7), indexing="ij")
    flipped = np.where((kx + ky) % 2 == 1, -spectra, spectra)
    got, cm2 = insert_slices_forward(flipped, weights, *args, centred_source=True, decentre=True, scale=0.75)
    z, y, x = np.meshgrid(*(np.arange(n) for n in plain.shape[1:]), indexing="ij")
    expected = plain * np.where((x + y + z) % 2 == 1, -1, 1).astype(np.float32) * np.float32(0.75)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(cm2, cm)


def naive_half_to_centred_full(h):
    """``Centering::fftwHalfToFftwFull`` + ``fftwFullToHumanFull``, loop by loop."""
    d, hh, w = h.shape
    wd = 2 * (w - 1)
    out = np.zeros((d, hh, wd), h.dtype)
    for z in range(d):
        for y in range(hh):
            for x in range(w):
                out[z, y, x] = h[z, y, x]
                if x > 0:
                    out[(d - z) % d, (hh - y) % hh, wd - x] = h[z, y, x]
    human = np.empty_like(out)
    for z in range(d):
        for y in range(hh):
            for x in range(wd):
                human[z, y, x] = out[(z + d - d // 2) % d, (y + hh - hh // 2) % hh, (x + wd - wd // 2) % wd]
    return human


@pytest.mark.parametrize("shape", [(8, 8, 5), (6, 6, 4), (4, 6, 3)])
def test_half_to_centred_full_follows_relion_loops(shape):
    h = rng.random(shape).astype(np.float32)
    np.testing.assert_array_equal(half_to_centred_full(h), naive_half_to_centred_full(h))


def test_taper_follows_the_formula():
    s, dist = 10, 3.0
    img = rng.standard_normal((s, s, s)).astype(np.float32)
    got = taper(img.copy(), dist, True)
    z, y, x = np.meshgrid(*(np.arange(s),) * 3, indexing="ij")
    r = np.sqrt((x - s / 2) ** 2 + (y - s / 2) ** 2 + (z - s / 2) ** 2)
    c = np.where(r < s / 2 - dist, 1.0, 0.5 - 0.5 * np.cos(np.pi * (s / 2 - r) / dist))
    inside = r < s / 2
    mean = (c * img)[inside].sum() / c[inside].sum()
    np.testing.assert_allclose(got, np.where(inside, c * (img - mean), 0).astype(np.float32), rtol=1e-6, atol=1e-7)


