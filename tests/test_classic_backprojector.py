"""relion_reconstruct's classic BackProjector kernels (kernels/classic/): each against a plain-numpy
reference or an invariant (a translation, a central slice, Hermitian symmetry, RELION's tables)."""
import math

import numpy as np
import pytest

from relion_py.runtime.errors import RelionPyError
from relion_py.kernels.classic.fftw_arrays import normalise_and_weight, shift_fourier, window_fourier_transform
from relion_py.kernels.classic.insertion import SlabEntries, backproject_2d_to_3d, backrotate_3d
from relion_py.kernels.classic.matrix2d import inverse_3x3
from relion_py.kernels.classic.padded_grid import new_accumulator, split_accumulator
from relion_py.kernels.classic.reconstruct import ft_blob_table
from relion_py.kernels.classic.symmetrise import apply_point_group_symmetry, enforce_hermitian_symmetry
from relion_py.kernels.ctf import astigmatism_form, ctf_constants, ctf_image, ctf_value
from relion_py.tomography.geometry import euler_to_matrix
from relion_py.kernels.classic.reconstruct_grid import Grid


def test_inverse_3x3_and_euler_to_matrix():
    m = euler_to_matrix([10.0, -75.5], [33.0, 120.0], [0.0, 260.0])
    for a in m:
        np.testing.assert_allclose(inverse_3x3(a), a.T, atol=1e-15)
    # RELION's DEG2RAD(d) = d * PI / 180: the last bit matters for boundary pixels
    assert m[0, 0, 0] == (math.cos(0.0) * (math.cos(33.0 * math.pi / 180) * math.cos(10.0 * math.pi / 180))
                          - math.sin(0.0) * math.sin(10.0 * math.pi / 180))


def test_grid_sizes():
    g = Grid.create(48, 2.0, 24, 10)
    assert (g.P, g.pad, g.max_r2, g.min_r2_nn) == (48, 99, 2304, 400)
    assert (g.r_max_ref_2, g.round_max_r2) == (2304, 2304)
    g = Grid.create(48, 1.0, 12, 10)
    assert (g.P, g.pad) == (12, 27)


def test_shift_fourier_is_a_translation():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((16, 16))
    f = np.fft.rfftn(img)
    shift_fourier(f, 16, (3.0, -2.0))
    np.testing.assert_allclose(np.fft.irfftn(f, img.shape, axes=(0, 1)), np.roll(img, (-2, 3), axis=(0, 1)),
                               atol=1e-12)


@pytest.mark.parametrize("weight_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divisor, weighted", [(48.0 ** 3, True), (48.0 ** 3, False), (None, True), (7.0, True)])
def test_normalise_and_weight_rounds_as_numpy(weight_dtype, divisor, weighted):
    """The fused pass gives the bits of numpy's ``f /= divisor; f *= weight`` (complex128 by a real scalar and
    a real array), signed zeros, infinities and NaN included."""
    rng = np.random.default_rng(4)
    f = rng.standard_normal((20, 20, 11)) + 1j * rng.standard_normal((20, 20, 11))
    f.real[rng.random(f.shape) < 0.1] = -0.0
    f.imag[rng.random(f.shape) < 0.1] = 0.0
    f.real[0, 0, :3] = [np.inf, -np.inf, np.nan]
    w = rng.standard_normal(f.shape).astype(weight_dtype)
    w[rng.random(f.shape) < 0.2] = 0.0
    w[rng.random(f.shape) < 0.05] = -0.0
    expect = f.copy()
    with np.errstate(invalid="ignore"):
        if divisor is not None:
            expect /= divisor
        if weighted:
            expect *= w
    got = normalise_and_weight(f, divisor, w if weighted else None)
    assert got is f and got.tobytes() == expect.tobytes()


def test_ctf_image_matches_ctf_value():
    consts = ctf_constants(300.0, 2.7, 0.1, 50.0, 0.0)
    astig = astigmatism_form(25000.0, 24000.0, 33.0)
    out = ctf_image(32, 5.0, consts, astig, 1.0)
    y, x = 20, 7                                   # row 20 is ky = -12
    assert out[y, x] == ctf_value(7 / 160.0, -12 / 160.0, *consts, *astig, 1.0, 0.0)
    assert np.all(ctf_image(32, 5.0, consts, astig, 1.0, do_abs=True) == np.abs(out))
    flip = ctf_image(32, 5.0, consts, astig, 1.0, only_flip_phases=True)
    assert set(np.unique(flip)) <= {-1.0, 1.0}


def test_window_fourier_transform_keeps_signed_indices():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((9, 9, 5)) + 1j * rng.standard_normal((9, 9, 5))
    big = window_fourier_transform(f, 16)
    assert big.shape == (16, 16, 9)
    assert big[-3, 2, 1] == f[-3, 2, 1] and big[2, -2, 2] == f[2, -2, 2] and big[0, 0, 5] == 0
    assert big[4, 4, 4] == 0                        # beyond the input's radius 4: not copied
    small = window_fourier_transform(big, 8)
    assert small[-3, 2, 1] == f[-3, 2, 1] and small[4, 0, 0] == big[4, 0, 0]


def test_hermitian_sum_and_point_group():
    acc = new_accumulator(7)
    acc[3 + 1, 3 + 2, 0] = (1.0, 2.0, 3.0)
    acc[3 - 1, 3 - 2, 0] = (5.0, 7.0, 1.0)
    data, weight = split_accumulator(acc)
    enforce_hermitian_symmetry(data, weight)
    assert data[4, 5, 0] == 6 - 5j and data[2, 1, 0] == 6 + 5j and weight[4, 5, 0] == weight[2, 1, 0] == 4
    # C2 about z: (x, y, z) → (-x, -y, z); the sum over the group is symmetric. The grid must hold the
    # interpolation's x0+1, y0+1, z0+1 for every |k|² <= rmax2 (as RELION's padded grids do): 9 voxels for r 3
    data, weight = split_accumulator(new_accumulator(9))
    data[:] = 0
    weight[:] = 0
    weight[4 + 2, 4, 1] = 1.0                      # logical (x, y, z) = (1, 0, 2)
    # R (1, 0, 2) = (-1, 0, 2): stored as its Friedel mate (1, 0, -2)
    apply_point_group_symmetry(data, weight, np.diag([-1.0, -1.0, 1.0])[None], 9)
    assert weight[4 + 2, 4, 1] == 1.0 and weight[4 - 2, 4, 1] == 1.0 and weight.sum() == 2.0


def test_blob_table():
    table, sampling = ft_blob_table(3.8, 15.0, 0)
    assert sampling == 5e-5 and table.shape == (10000,)
    assert table[0] > 0 and np.all(np.diff(table[:4000]) < 0)
    table2, _ = ft_blob_table(3.8, 15.0, 2)
    assert table2[0] > 0
    with pytest.raises(RelionPyError):
        ft_blob_table(3.8, 15.0, 1)


def test_backprojection_of_one_image_fills_a_central_slice():
    """A constant-weight image inserted with A = identity lands in the kz = 0 plane of the padded grid."""
    g = Grid.create(16, 2.0, 8, 10)
    acc = new_accumulator(g.pad)
    f = np.ones((16, 9), np.complex128)
    backproject_2d_to_3d(acc, f, np.ones((16, 9)), inverse_3x3(np.eye(3)) * 2.0, g.max_r2, g.min_r2_nn)
    data, weight = split_accumulator(acc)
    off = (g.pad - 1) // 2
    assert weight[off].sum() > 0 and weight[:off].sum() == 0 and weight[off + 1:].sum() == 0
    assert weight[off, off + 4, 6] == 1.0          # (x, y) = (3, 2) · pf
    assert weight[off, off + 1, 1] == 0.0          # between the pf-spaced samples


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("nn", [False, True])
@pytest.mark.parametrize("per_batch, slab_h", [(1, 1), (3, 2), (3, 3), (7, 5)])
def test_slab_batches_equal_direct_insertion(dim, nn, per_batch, slab_h):
    """The batched slab-by-slab insertion adds, bit for bit, what the per-image kernels add one image after
    the other (RELION's order), whatever the batch and slab sizes, for trilinear and nearest-neighbour
    insertion."""
    n = 24
    grid = Grid.create(n, 2.0, n // 2, 4)
    rng = np.random.default_rng(3)
    shape = (n, n // 2 + 1) if dim == 2 else (n, n, n // 2 + 1)
    angles = rng.uniform(-180, 180, (7, 3))
    mats = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    direct = new_accumulator(grid.pad)
    batched = new_accumulator(grid.pad)
    # room for per_batch images (each entry of an image may be stored twice: in its slab and the next)
    buf = SlabEntries(direct.shape[:3], slab_h, 2 * per_batch * np.prod(shape))
    for a in mats:
        f = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        w = rng.random(shape) - 0.1                                         # some weights <= 0: skipped
        ainv = inverse_3x3(a) * grid.pf
        scratch = buf.scratch(shape)
        if dim == 2:
            args = (f, w, ainv, grid.max_r2, grid.min_r2_nn, nn)
            backproject_2d_to_3d(direct, *args, center_sign=True, zero_dc=True)
            counts = buf.resolve_2d(scratch, *args)
        else:
            args = (f, w, ainv, grid.r_max_ref_2, grid.r_min_nn_ref_2, nn)
            backrotate_3d(direct, *args, center_sign=True, zero_dc=True)
            counts = buf.resolve_3d(scratch, *args)
        starts = buf.reserve(counts)
        if starts is None:
            buf.insert(batched)
            starts = buf.reserve(counts)
        buf.place(starts, scratch, counts)
    buf.insert(batched)
    assert np.array_equal(batched, direct)
    assert np.count_nonzero(direct[..., 2]) > 100


