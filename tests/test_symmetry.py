"""Tests for relion_py.tomography.symmetry (RELION point-group and helical operators)."""

import hashlib
import math

import numpy as np
import pytest


from relion_py.runtime.errors import RelionPyError
from relion_py.tomography.helical_symmetry import (
    helical_hh,
    helical_rotations,
    helical_symmetry_matrices,
    tomo_symmetry_matrices,
)
from relion_py.tomography.symmetry import is_c1, point_group_operators, point_group_order

# name -> (group order, all operators proper rotations?)
ORDERS = {
    "C1": (1, True), "C2": (2, True), "C3": (3, True), "C4": (4, True), "C7": (7, True),
    "C12": (12, True), "C99": (99, True),
    "Ci": (2, False), "Cs": (2, False),
    "C1v": (2, False), "C2v": (4, False), "C3v": (6, False), "C10v": (20, False),
    "C1h": (2, False), "C2h": (4, False), "C5h": (10, False), "C12h": (24, False),
    "S2": (2, False), "S4": (4, False), "S6": (6, False), "S10": (10, False),
    "D1": (2, True), "D2": (4, True), "D3": (6, True), "D7": (14, True), "D12": (24, True),
    "D1v": (4, False), "D2v": (8, False), "D3v": (12, False), "D13v": (52, False),
    "D1h": (4, False), "D2h": (8, False), "D6h": (24, False), "D12h": (48, False),
    "T": (12, True), "Td": (24, False), "Th": (24, False),
    "O": (24, True), "Oh": (48, False),
    "I": (60, True), "I1": (60, True), "I2": (60, True), "I3": (60, True), "I4": (60, True),
    "Ih": (120, False), "I1h": (120, False), "I2h": (120, False), "I3h": (120, False),
    "I4h": (120, False),
}

# SHA-256 (first 32 hex digits) of the little-endian float64 bytes of the (n-1, 3, 3) operator
# list (3x3 part of SymList's R matrices, in SymList order), produced by RELION 5.0.1's own
# symmetries.cpp / transformations.cpp / numerical_recipes.cpp compiled in double precision
# (x86-64, no FMA). Equality means bit-identical values in RELION's order. Td, Oh, I3h and I4h are
# not listed: their mirror generators use A^T where RELION inverts A numerically (last-bit differences,
# far below float32 precision; see test_closure_orthogonality_distinctness).
RELION_DIGESTS = {
    "C4": "60442b5d218267101702b244f95b4a96",
    "C5v": "915b54ffc8b369cf76e74ea1da5f35bb",
    "C6h": "166332eb78bf8bead1a037a716750af3",
    "S6": "144e908cf91fd1fe4a904a60119b8cad",
    "D3": "2c88233744ac8b1819e28447c2abf808",
    "D7": "53f852f113e57ca1f975f27b5805f09d",
    "D2v": "204eee7f9fbe23d04f70ae8355003a56",
    "D2h": "ea15555bc2c5b59aca862c30df600408",
    "T": "9646057b150809320650a42990c858e6",
    "Th": "2a4f0ab548c2b9cf9282ef35e8e160fe",
    "O": "6ef7e5c9c529e2afa533bee0370dcf8f",
    "I1": "053a856d0729f1f9e1a53e51d6096ed9",
    "I2": "a0d9be2738ef070c693c872f276843c4",
    "I3": "8d47cc2bc0256baea4e10cf7f31245bf",
    "I4": "9f27c89ef65e7c4bd13e76d728996055",
    "Ih": "d6260bc3998518349b894fbe3f5b5615",
    "I1h": "849df113c1cbc536d3b0a0b714e7b95d",
}


def rot(axis, deg):
    """Active right-handed rotation by deg about axis (Rodrigues)."""
    u = np.asarray(axis, float)
    u = u / np.linalg.norm(u)
    t = math.radians(deg)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def contains(ops, m, tol=1e-9):
    return bool(np.any(np.all(np.abs(ops - m) <= tol, axis=(1, 2))))


def full_group(name):
    return point_group_operators(name, include_identity=True)


# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ORDERS))
def test_group_order(name):
    order, _ = ORDERS[name]
    ops = point_group_operators(name)
    assert ops.shape == (order - 1, 3, 3)
    assert ops.dtype == np.float64
    assert point_group_order(name) == order
    assert full_group(name).shape == (order, 3, 3)


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_closure_orthogonality_distinctness(name):
    _, proper = ORDERS[name]
    # RELION's T and I axes are typed with 6-10 digits and products have entries below 1e-6
    # zeroed, so those groups close (and are orthogonal) only to ~1e-6, RELION's own
    # tolerance; the others are exact to round-off.
    tol = 1e-6 if name[0] in "TI" else 1e-9
    g = full_group(name)
    n = len(g)
    # orthogonal
    for m in g:
        assert np.allclose(m @ m.T, np.eye(3), rtol=0, atol=tol)
    dets = np.linalg.det(g)
    assert np.allclose(np.abs(dets), 1.0, rtol=0, atol=tol)
    if proper:
        assert np.all(dets > 0)
    else:
        # an improper group: exactly half of the elements have determinant -1
        assert np.sum(dets < 0) == n // 2
    # identity excluded from RELION's list; all elements distinct
    assert not contains(point_group_operators(name), np.eye(3), tol=1e-6)
    diff = np.abs(g[:, None] - g[None, :]).max(axis=(2, 3))
    np.fill_diagonal(diff, 1.0)
    assert diff.min() > 1e-6
    # closure under multiplication
    prods = np.einsum("aij,bjk->abik", g, g).reshape(-1, 1, 3, 3)
    ok = np.all(np.abs(prods - g[None]) <= tol, axis=(2, 3)).any(axis=1)
    assert ok.all()


@pytest.mark.parametrize("name", sorted(RELION_DIGESTS))
def test_bit_identical_to_relion(name):
    ops = np.ascontiguousarray(point_group_operators(name).astype("<f8") + 0.0)
    assert hashlib.sha256(ops.tobytes()).hexdigest()[:32] == RELION_DIGESTS[name]


def test_cn_about_z_in_relion_order():
    # generators are stored transposed: j-th entry = rotation by -j*360/n about +z
    for n in (2, 3, 4, 5, 6, 7, 12):
        ops = point_group_operators(f"C{n}")
        for j, m in enumerate(ops, start=1):
            np.testing.assert_allclose(m, rot([0, 0, 1], -j * 360.0 / n), atol=1e-12)
    c4 = point_group_operators("C4")
    # exact values (small entries zeroed by RELION)
    np.testing.assert_array_equal(c4[0], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(c4[1], [[-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(c4[2], [[0, -1, 0], [1, 0, 0], [0, 0, 1]])


def test_dn_axes_and_order():
    for n in (1, 2, 3, 5):
        ops = point_group_operators(f"D{n}")
        # n-fold generators first, then the 2-fold about x
        for j in range(1, n):
            np.testing.assert_allclose(ops[j - 1], rot([0, 0, 1], -j * 360.0 / n), atol=1e-12)
        np.testing.assert_array_equal(ops[n - 1], np.diag([1.0, -1.0, -1.0]))
    d2 = full_group("D2")
    for m in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        assert contains(d2, m)


def test_improper_generators():
    np.testing.assert_array_equal(point_group_operators("Ci")[0], -np.eye(3))
    np.testing.assert_array_equal(point_group_operators("Cs")[0], np.diag([1.0, 1, -1]))
    c3v = point_group_operators("C3v")
    np.testing.assert_allclose(c3v[2], np.diag([1.0, -1, 1]), atol=0)   # mirror normal y
    c2h = full_group("C2h")
    assert contains(c2h, -np.eye(3))
    d2v = point_group_operators("D2v")
    np.testing.assert_array_equal(d2v[2], np.diag([-1.0, 1, 1]))        # mirror normal x
    oh = point_group_operators("Oh")
    n = np.array([0, 1, 1]) / math.sqrt(2)
    np.testing.assert_allclose(oh[5], np.eye(3) - 2 * np.outer(n, n), atol=1e-15)
    # RELION quirk: S<n> is built as C(n/2) x Ci, so S4 is C2h (contains -I)
    assert contains(full_group("S4"), -np.eye(3))
    assert contains(full_group("S6"), rot([0, 0, 1], 60) @ np.diag([1.0, 1, -1]))


def test_polyhedral_orientations():
    t = full_group("T")
    assert contains(t, rot([0, 0, 1], 120), tol=1e-6)
    o = full_group("O")
    for ax in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        assert contains(o, rot(ax, 90), tol=1e-6)
    assert contains(o, rot([1, 1, 1], 120), tol=1e-6)
    # I1 and I2 (= I): 2-folds along x, y and z
    for name in ("I", "I1", "I2"):
        g = full_group(name)
        for m in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
            assert contains(g, m, tol=1e-6), name
    # their 5-fold axes lie in the xz plane, differently
    assert contains(full_group("I2"), rot([0.525731114, 0, 0.850650807], 72), tol=1e-6)
    assert contains(full_group("I1"), rot([0.85065080702670, 0, -0.5257311142635], 72), tol=1e-6)
    assert not contains(full_group("I1"), rot([0.525731114, 0, 0.850650807], 72), tol=1e-6)
    # I3 and I4: a 5-fold along z; 2-folds at +-(0.5257, 0, 0.8507)
    for name, x in (("I3", -0.5257311143), ("I4", 0.5257311143)):
        g = full_group(name)
        assert contains(g, rot([0, 0, 1], 72), tol=1e-6), name
        assert contains(g, rot([x, 0, 0.8506508070], 180), tol=1e-6), name
    # I == I2, Ih == I2h
    np.testing.assert_array_equal(point_group_operators("I"), point_group_operators("I2"))
    np.testing.assert_array_equal(point_group_operators("Ih"), point_group_operators("I2h"))
    # Ih variants: the I group plus the mirror RELION lists
    for name, normal in (("I1h", [0, 0, 1]), ("I2h", [1, 0, 0])):
        n = np.asarray(normal, float)
        assert contains(full_group(name), np.eye(3) - 2 * np.outer(n, n), tol=1e-6)


@pytest.mark.parametrize("name, n_gen", [("T", 3), ("D3", 3), ("O", 5), ("I1", 7), ("I3h", 8),
                                          ("Th", 4), ("C4h", 4)])
def test_generation_order_relion_procedure(name, n_gen):
    """Generators first (definition order), then compute_subgroup's products: pairs visited
    shell by shell, (0,n), (1,n), ..., (n,n), (n,n-1), ..., (n,0), product R_i R_j kept if
    neither the identity nor already present (1e-6), small entries zeroed, appended."""
    ops = point_group_operators(name)
    mats = [m for m in ops[:n_gen]]
    n = 0
    while n < len(mats):
        for i, j in [(i, n) for i in range(n + 1)] + [(n, j) for j in range(n - 1, -1, -1)]:
            p = mats[i] @ mats[j]
            if np.all(np.abs(p - np.eye(3)) <= 1e-6) or np.any(
                    np.all(np.abs(np.array(mats) - p) <= 1e-6, axis=(1, 2))):
                continue
            p[np.abs(p) < 1e-6] = 0.0
            mats.append(p)
        n += 1
    np.testing.assert_allclose(np.array(mats), ops, rtol=0, atol=1e-12)


def test_generators_first():
    ops = point_group_operators("T")
    np.testing.assert_allclose(ops[0], rot([0, 0, 1], -120), atol=1e-12)
    np.testing.assert_allclose(ops[1], rot([0, 0, 1], -240), atol=1e-12)
    np.testing.assert_allclose(ops[2], rot([0, 0.816496, 0.577350], 180), atol=1e-12)
    ops = point_group_operators("I1")
    np.testing.assert_array_equal(ops[0], np.diag([1.0, -1, -1]))
    for j in range(1, 5):
        np.testing.assert_allclose(ops[j], rot([0.85065080702670, 0, -0.5257311142635], -72 * j),
                                   atol=1e-12)
    for j in range(1, 3):
        np.testing.assert_allclose(ops[4 + j], rot([0.9341723640, 0.3568220765, 0], -120 * j),
                                   atol=1e-12)


def test_case_insensitive_and_c1():
    np.testing.assert_array_equal(point_group_operators("d2h"), point_group_operators("D2H"))
    np.testing.assert_array_equal(point_group_operators("i3"), point_group_operators("I3"))
    assert point_group_operators("C1").shape == (0, 3, 3)
    assert point_group_operators("c1", include_identity=True).shape == (1, 3, 3)
    assert is_c1("C1") and is_c1("c1") and not is_c1("C01") and not is_c1("C2")
    assert point_group_operators("C01").shape == (0, 3, 3)


def test_returned_arrays_are_independent():
    a = point_group_operators("D3")
    a[:] = 0
    assert point_group_operators("D3").any()


@pytest.mark.parametrize("bad", ["X7", "", "C", "Q", "C0", "D0", "S0", "S3", "S5", "I5", "I5h",
                                 "C100", "D2x", "Cz", "C2 ", "IX", "I6", "Oh2", "TDX", "C2vh"])
def test_bad_names(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RelionPyError) as err:
        point_group_operators(bad)
    assert "\n" not in str(err.value)


def test_symmetry_file(tmp_path, monkeypatch):
    f = tmp_path / "my.sym"
    f.write_text("# a comment\n; another\nrot_axis 3 0 0 1\n\nmirror_plane 0 1 0\r\n")
    np.testing.assert_array_equal(point_group_operators(str(f)), point_group_operators("C3v"))
    # RELION quirk: an existing file wins over a group name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "C2").write_text("rot_axis 5 0 0 1\n")
    assert point_group_order("C2") == 5
    bad = tmp_path / "bad.sym"
    bad.write_text("rot_axis 3 1 1 1\nmirror_plane 1 -1 0.3\n")
    with pytest.raises(RelionPyError):
        point_group_operators(str(bad))


# ------------------------------------------------------------------------------------------
# Helical
# ------------------------------------------------------------------------------------------

def test_helical_hh():
    assert helical_hh(1).tolist() == []
    assert helical_hh(2).tolist() == [-1]
    assert helical_hh(3).tolist() == [-1, 1]
    assert helical_hh(4).tolist() == [-2, -1, 1]
    assert helical_hh(5).tolist() == [-2, -1, 1, 2]
    assert helical_hh(6).tolist() == [-3, -2, -1, 1, 2]


def test_helical_symmetry_matrices():
    m = helical_symmetry_matrices(3, 30.0, 2.4)
    assert m.shape == (2, 4, 4)
    for mat, hh in zip(m, (-1, 1)):
        np.testing.assert_allclose(mat[:3, :3], rot([0, 0, 1], -hh * 30.0), atol=1e-15)
        assert mat[:3, 3].tolist() == [0.0, 0.0, -hh * 2.4]
        assert mat[3].tolist() == [0.0, 0.0, 0.0, 0.0]
    # exact RELION arithmetic: cos/sin of (hh * -twist) * PI / 180, no zeroing
    r = m[0]
    ang = (-1.0 * -30.0) * 3.14159265358979323846 / 180
    assert r[0, 0] == math.cos(ang) and r[1, 0] == math.sin(ang) and r[0, 1] == -math.sin(ang)
    m90 = helical_symmetry_matrices(2, 90.0, 0.0)
    assert m90[0, 0, 0] != 0.0 and abs(m90[0, 0, 0]) < 1e-15      # not zeroed in jaz


def test_helical_rotations_backprojector():
    hh, r = helical_rotations(4, 90.0)
    assert hh.tolist() == [-2, -1, 1]
    np.testing.assert_array_equal(r[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # +90 about z
    np.testing.assert_array_equal(r[0], [[-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    _, r_raw = helical_rotations(4, 90.0, zero_small_values=False)
    np.testing.assert_array_equal(r_raw, helical_symmetry_matrices(4, 90.0, 1.0)[:, :3, :3])


def test_tomo_symmetry_matrices():
    assert tomo_symmetry_matrices("C1").shape == (0, 4, 4)
    d3 = tomo_symmetry_matrices("D3")
    assert d3.shape == (5, 4, 4)
    np.testing.assert_array_equal(d3[:, :3, :3], point_group_operators("D3"))
    assert not d3[:, 3, :].any() and not d3[:, :, 3].any()
    both = tomo_symmetry_matrices("D3", 3, 30.0, 2.4)
    assert both.shape == (7, 4, 4)
    np.testing.assert_array_equal(both[:5], d3)
    np.testing.assert_array_equal(both[5:], helical_symmetry_matrices(3, 30.0, 2.4))
    hel = tomo_symmetry_matrices("c1", 3, 30.0, 2.4)
    np.testing.assert_array_equal(hel, helical_symmetry_matrices(3, 30.0, 2.4))
