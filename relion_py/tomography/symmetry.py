"""RELION point-group symmetry operators (helical ones: :mod:`.helical_symmetry`).

Point groups mirror ``SymList::read_sym_file`` (src/symmetries.cpp) with
``isSymmetryGroup``, ``fill_symmetry_class`` and ``compute_subgroup``; helical operators
mirror ``Symmetry::getHelicalSymmetryMatrices`` (src/jaz/image/symmetry.cpp, used by
relion_tomo_reconstruct_particle) and the operator loop of
``BackProjector::applyHelicalSymmetry`` (src/backprojector.cpp, used by relion_reconstruct).

All arithmetic that produces the matrices is done in IEEE double in the same operation
order as RELION (scalar ``math.sin``/``math.cos``/``math.sqrt`` from the C library, matrix
products accumulated from 0 in k order, no fused multiply-add), so that the operators are
bit-identical to RELION 5.0.1 built in double precision on x86-64 — except for groups with
mirror planes, whose generators use A^T for RELION's numerical inverse of the rotation A
(last-bit differences).

Conventions shared by both programs:

* RELION's operator list does **not** contain the identity; the programs use the
  unrotated input as the implicit first operator.
* An operator ``R`` is applied to a Fourier-space voxel coordinate ``k`` (column vector)
  as ``k' = R @ k``; the map is interpolated at ``k'`` and added to the value at ``k``.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from functools import lru_cache

import numpy as np

from relion_py.runtime.errors import RelionPyError

__all__ = [
    "EQUAL_ACCURACY",
    "point_group_operators",
    "point_group_order",
    "point_group_definition",
    "is_c1",
    "rotation_z",
    "set_small_to_zero",
]

#: XMIPP_EQUAL_ACCURACY of a double-precision RELION build (macros.h).
EQUAL_ACCURACY = 1e-6

_GROUP_HELP = ("expected C<n>, Ci, Cs, C<n>v, C<n>h, S<n> (n even), D<n>, D<n>v, D<n>h, "
               "T, Td, Th, O, Oh, I, I1..I4, Ih, I1h..I4h (n = 1..99), or a symmetry file")

# Generators ("file content") of the built-in groups, as fill_symmetry_class writes them.
# The text is kept verbatim because it is parsed exactly like a symmetry file (rotation
# axes with %lf, mirror normals with %f, i.e. rounded to float32).
_I2_LINES = ("rot_axis 2  0 0 1",
             "rot_axis 5  0.525731114  0 0.850650807",
             "rot_axis 3  0 0.356822076 0.934172364")
_I1_LINES = ("rot_axis 2  1  \t   0\t       0",
             "rot_axis 5 0.85065080702670 0 -0.5257311142635",
             "rot_axis 3 0.9341723640 0.3568220765 0")
# RELION quirk: the I3 3-fold line has commas after the numbers; %lf stops at them.
_I3_LINES = ("rot_axis 2  -0.5257311143 0 0.8506508070",
             "rot_axis 5  0. 0. 1.",
             "rot_axis 3  -0.4911234778630044, 0.3568220764705179, 0.7946544753759428")
_I4_LINES = ("rot_axis 2  0.5257311143 0 0.8506508070",
             "rot_axis 5  0.8944271932547096 0 0.4472135909903704",
             "rot_axis 3  0.4911234778630044 0.3568220764705179 0.7946544753759428")
_T_LINES = ("rot_axis 3  0. 0. 1.",
            "rot_axis 2 0. 0.816496 0.577350")
_O_LINES = ("rot_axis 3  .5773502  .5773502 .5773502",
            "rot_axis 4 0 0 1")


# ------------------------------------------------------------------------------------------
# Name parsing (isSymmetryGroup) and generators (fill_symmetry_class)
# ------------------------------------------------------------------------------------------

def _parse_group_name(name: str) -> tuple[str, int] | None:
    """Mirror of ``SymList::isSymmetryGroup``: (group code, order) or None.

    Group codes: CN, CI, CS, CNV, CNH, SN, DN, DNV, DNH, T, TD, TH, O, OH, I, I1..I5,
    IH, I1H..I5H (``I`` and ``I2`` are the same group, as are ``IH`` and ``I2H``).
    """
    base = name.rsplit("/", 1)[-1]           # FileName::removeDirectories
    size = len(base)
    if size < 1 or size > 4:
        return None
    g1 = base[0].upper()
    g2 = base[1].upper() if size > 1 else ""
    g3 = base[2].upper() if size > 2 else ""
    # RELION quirk: the 4th character is taken from the name *with* its directories.
    g4 = name[3].upper() if size > 3 and len(name) > 3 else ""

    def dig(c: str) -> bool:
        return c in "0123456789" and c != ""

    if size == 1:
        return {"T": ("T", -1), "O": ("O", -1), "I": ("I2", -1)}.get(g1)
    if size == 2:
        if g1 in "CSD" and dig(g2):
            return ({"C": "CN", "S": "SN", "D": "DN"}[g1], int(g2))
        fixed = {"CI": "CI", "CS": "CS", "TD": "TD", "TH": "TH", "OH": "OH",
                 "I1": "I1", "I2": "I2", "I3": "I3", "I4": "I4", "I5": "I5", "IH": "I2H"}
        code = fixed.get(g1 + g2)
        return (code, -1) if code else None
    if size == 3:
        if g1 in "CSD" and dig(g2) and dig(g3):
            return ({"C": "CN", "S": "SN", "D": "DN"}[g1], int(g2 + g3))
        if g1 in "CD" and dig(g2) and g3 in ("V", "H"):
            return (g1 + "N" + g3, int(g2))
        if g1 == "I" and g2 in ("1", "2", "3", "4", "5") and g3 == "H":
            return ("I" + g2 + "H", -1)
        return None
    # size == 4
    if g1 in "CD" and dig(g2) and dig(g3) and g4 in ("V", "H"):
        return (g1 + "N" + g4, int(g2 + g3))
    return None


def _group_lines(name: str, code: str, order: int) -> list[str]:
    """Mirror of ``SymList::fill_symmetry_class``: the generator lines of a group."""
    if code in ("CN", "CNV", "CNH", "SN") and order < 1 or code.startswith("D") and order < 1:
        raise RelionPyError(f"symmetry group '{name}' has order 0; {_GROUP_HELP}")
    if code == "CN":
        return [f"rot_axis {order} 0 0 1"]
    if code == "CI":
        return ["inversion "]
    if code == "CS":
        return ["mirror_plane 0 0 1"]
    if code == "CNV":
        return [f"rot_axis {order} 0 0 1", "mirror_plane 0 1 0"]
    if code == "CNH":
        return [f"rot_axis {order} 0 0 1", "mirror_plane 0 0 1"]
    if code == "SN":
        if order % 2 != 0:
            raise RelionPyError(f"symmetry group '{name}': the order of S<n> must be even")
        # RELION quirk: S<n> is built as an (n/2)-fold axis plus inversion, i.e. the group
        # C(n/2) x Ci. That is the true S<n> only when n/2 is odd (S4 gives C2h).
        return [f"rot_axis {order // 2} 0 0 1", "inversion "]
    if code in ("DN", "DNV", "DNH"):
        lines = [f"rot_axis {order} 0 0 1"] if order > 1 else []
        lines.append("rot_axis 2 1 0 0")
        if code == "DNV":
            lines.append("mirror_plane 1 0 0")
        elif code == "DNH":
            lines.append("mirror_plane 0 0 1")
        return lines
    if code == "T":
        return list(_T_LINES)
    if code == "TD":
        return list(_T_LINES) + ["mirror_plane 1.4142136 2.4494897 0.0000000"]
    if code == "TH":
        return ["rot_axis 3  0. 0. 1.", "rot_axis 2 0. -0.816496 -0.577350", "inversion"]
    if code == "O":
        return list(_O_LINES)
    if code == "OH":
        return list(_O_LINES) + ["mirror_plane 0 1 1"]
    if code == "I2":
        return list(_I2_LINES)
    if code == "I1":
        return list(_I1_LINES)
    if code == "I3":
        return list(_I3_LINES)
    if code == "I4":
        return list(_I4_LINES)
    if code == "I2H":
        return list(_I2_LINES) + ["mirror_plane 1 0 0"]
    if code == "I1H":
        return list(_I1_LINES) + ["mirror_plane 0 0 -1"]
    if code == "I3H":
        return list(_I3_LINES) + ["mirror_plane 0.850650807 0  0.525731114"]
    if code == "I4H":
        return list(_I4_LINES) + ["mirror_plane 0.850650807 0 -0.525731114"]
    if code in ("I5", "I5H"):
        raise RelionPyError(f"symmetry group '{name}' is not implemented in RELION")
    raise RelionPyError(f"unknown symmetry group '{name}'; {_GROUP_HELP}")  # pragma: no cover


def _file_lines(path: str) -> list[str]:
    """Lines of a symmetry file as ``read_sym_file`` collects them.

    RELION reads with ``fgets(line, 79, ...)``: a physical line longer than 78 characters
    is split into several pieces, each treated as a line. Pieces starting with ';' or '#'
    (and empty ones) are skipped.
    """
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("latin-1")
    except OSError as exc:
        raise RelionPyError(f"cannot read symmetry file '{path}': {exc.strerror}") from None
    out = []
    for phys in text.splitlines(keepends=True):
        for start in range(0, len(phys), 78):
            piece = phys[start:start + 78].split("\0", 1)[0]
            if piece == "" or piece[0] in ";#":
                continue
            out.append(piece)
    return out


def point_group_definition(name: str) -> list[str]:
    """The generator lines RELION builds the group from (``fill_symmetry_class``), or the
    lines of the symmetry file when ``name`` is an existing file.

    RELION quirk: ``read_sym_file`` first tries to open ``name`` as a file and only then
    interprets it as a group name, so an existing file called e.g. ``C2`` wins.
    """
    if not isinstance(name, str):
        raise RelionPyError(f"symmetry group must be a string, not {type(name).__name__}")
    if os.path.isfile(name):
        return _file_lines(name)
    parsed = _parse_group_name(name)
    if parsed is None:
        raise RelionPyError(f"unknown symmetry group '{name}'; {_GROUP_HELP}")
    return _group_lines(name, *parsed)


# ------------------------------------------------------------------------------------------
# Scalar helpers reproducing RELION's arithmetic
# ------------------------------------------------------------------------------------------

_NUM_RE = re.compile(r"[ \t\n\r\f\v]*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_INT_RE = re.compile(r"[ \t\n\r\f\v]*([+-]?\d+)")


def _scan_double(tok: str | None, what: str) -> float:
    """``sscanf(tok, "%lf")`` (correctly rounded, stops at the first non-number char)."""
    m = _NUM_RE.match(tok) if tok is not None else None
    if m is None:
        raise RelionPyError(f"symmetry definition: cannot read {what} from {tok!r}")
    return float(m.group(1))


def _scan_float(tok: str | None, what: str) -> float:
    """``sscanf(tok, "%f")`` into a C float: decimal rounded once, directly to float32."""
    m = _NUM_RE.match(tok) if tok is not None else None
    if m is None:
        raise RelionPyError(f"symmetry definition: cannot read {what} from {tok!r}")
    exact = Fraction(m.group(1))
    f = np.float32(float(exact))
    # float(exact) -> float32 may double-round; pick the float32 nearest to the exact value.
    best = None
    for cand in (np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))):
        if not np.isfinite(cand):
            continue
        err = abs(Fraction(float(cand)) - exact)
        even = (int(cand.view(np.uint32)) & 1) == 0
        key = (err, not even)
        if best is None or key < best[0]:
            best = (key, cand)
    return float(best[1])


def _scan_int(tok: str | None, what: str) -> int:
    """``sscanf(tok, "%d")``."""
    m = _INT_RE.match(tok) if tok is not None else None
    if m is None:
        raise RelionPyError(f"symmetry definition: cannot read {what} from {tok!r}")
    return int(m.group(1))


def _tokens(line: str) -> list[str]:
    """strtok(line, " \\t\\n")."""
    return [t for t in re.split(r"[ \t\n]+", line) if t]


def _zeros4() -> list[list[float]]:
    return [[0.0] * 4 for _ in range(4)]


def _identity4() -> list[list[float]]:
    m = _zeros4()
    for i in range(4):
        m[i][i] = 1.0
    return m


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """Matrix2D::operator*: result(i,j) starts at 0 and accumulates a(i,k)*b(k,j), k = 0..n-1."""
    n, m, p = len(a), len(b), len(b[0])
    out = [[0.0] * p for _ in range(n)]
    for i in range(n):
        for j in range(p):
            s = 0.0
            for k in range(m):
                s += a[i][k] * b[k][j]
            out[i][j] = s
    return out


def _transpose(a: list[list[float]]) -> list[list[float]]:
    return [list(r) for r in zip(*a)]


def set_small_to_zero(a: list[list[float]], acc: float = EQUAL_ACCURACY) -> None:
    for r in a:
        for j, v in enumerate(r):
            if abs(v) < acc:
                r[j] = 0.0


def rotation_z(ang_deg: float) -> list[list[float]]:
    """``rotation3DMatrix(ang, 'Z')`` (homogeneous 4x4): active rotation by +ang."""
    ang = ang_deg * math.pi / 180          # DEG2RAD: (d * PI) / 180
    c = math.cos(ang)
    s = math.sin(ang)
    r = _zeros4()
    r[3][3] = 1.0
    r[0][0] = c
    r[0][1] = -s
    r[1][0] = s
    r[1][1] = c
    r[2][2] = 1.0
    return r


def _align_with_z(axis: tuple[float, float, float]) -> list[list[float]]:
    """``alignWithZ`` (homogeneous 4x4): rotation taking the normalised axis onto +z."""
    x, y, z = axis
    mod = math.sqrt(((0.0 + x * x) + y * y) + z * z)      # Matrix1D::module
    if abs(mod) > EQUAL_ACCURACY:
        im = 1.0 / mod
        x, y, z = x * im, y * im, z * im
    else:
        x = y = z = 0.0
    r = _zeros4()
    r[3][3] = 1.0
    proj = math.sqrt(y * y + z * z)
    if proj > EQUAL_ACCURACY:
        r[0][0] = proj
        r[0][1] = -x * y / proj
        r[0][2] = -x * z / proj
        r[1][0] = 0.0
        r[1][1] = z / proj
        r[1][2] = -y / proj
        r[2][0] = x
        r[2][1] = y
        r[2][2] = z
    else:
        r[0][2] = -1.0 if x > 0 else 1.0
        r[1][1] = 1.0
        r[2][0] = 1.0 if x > 0 else -1.0
    return r


def _rotation_axis(ang_deg: float, axis: tuple[float, float, float]) -> list[list[float]]:
    """``rotation3DMatrix(ang, axis)`` = (A^T * Rz(ang)) * A."""
    a = _align_with_z(axis)
    return _matmul(_matmul(_transpose(a), rotation_z(ang_deg)), a)


# ------------------------------------------------------------------------------------------
# read_sym_file + compute_subgroup
# ------------------------------------------------------------------------------------------

def _generators(lines: list[str]) -> list[tuple[int, np.ndarray]]:
    """Generator matrices in read_sym_file's order, as (L parity, R 4x4).

    The L matrix of RELION is always diag(1, 1, +-1, 1) here (inversion sets L(2,2) = -1,
    everything else leaves it the identity); it is carried as the sign of L(2,2) because
    ``compute_subgroup`` compares and multiplies L as well as R.
    """
    gens: list[tuple[int, np.ndarray]] = []
    for line in lines:
        tok = _tokens(line)
        if not tok:
            continue
        key = tok[0]
        if key == "rot_axis":
            fold = _scan_int(tok[1] if len(tok) > 1 else None, "rotation fold")
            if fold < 1:
                raise RelionPyError(f"symmetry definition: rotation fold must be >= 1, got {fold}")
            axis = tuple(_scan_double(tok[i] if len(tok) > i else None, "rotation axis")
                         for i in (2, 3, 4))
            ang_incr = 360.0 / fold
            rot_ang = ang_incr
            for _ in range(1, fold):
                r = _rotation_axis(rot_ang, axis)
                set_small_to_zero(r)
                gens.append((1, np.array(_transpose(r), dtype=np.float64)))
                rot_ang += ang_incr      # RELION accumulates the angle by repeated addition
        elif key == "inversion":
            r = np.diag([-1.0, -1.0, -1.0, 1.0])
            gens.append((-1, r))
        elif key == "mirror_plane":
            normal = tuple(_scan_float(tok[i] if len(tok) > i else None, "mirror normal")
                           for i in (1, 2, 3))
            a = _transpose(_align_with_z(normal))
            lm = _identity4()
            lm[2][2] = -1.0
            # A is a rotation, so its inverse is its transpose (RELION inverts it numerically, which
            # differs in the last bits at most); no setSmallValuesToZero on a mirror generator.
            r = _matmul(_matmul(a, lm), _transpose(a))
            gens.append((1, np.array(r, dtype=np.float64)))
        # other keywords are ignored by RELION
    return gens


def _compute_subgroup(gens: list[tuple[int, np.ndarray]]) -> tuple[list[int], list[np.ndarray]]:
    """Mirror of ``SymList::compute_subgroup``.

    Pairs (i, j) are visited in found_not_tried's order: shell n = 0, 1, 2, ...; within a
    shell (0,n), (1,n), ..., (n,n), (n,n-1), ..., (n,0). New matrices extend the list (and
    so add further shells). The product is R_i * R_j; it is dropped if it is the identity
    (L and 3x3 part of R) or equals a stored matrix (L and full 4x4 R) within 1e-6, else
    small values are zeroed and it is appended.

    RELION's found_not_tried has a clause meant to skip pairs of two derived matrices,
    but it compares against the growing count, so every pair is in fact tried.
    """
    par = [p for p, _ in gens]
    mats = [m for _, m in gens]
    if not mats:
        return par, mats
    eye3 = np.eye(3)
    # Generators that do not close (e.g. a mirror at a non-symmetric angle) make RELION
    # loop forever; no finite point group exceeds this bound for the given generators.
    limit = max(240, 8 * len(mats))
    n = 0
    while n < len(mats):
        if len(mats) > limit:
            raise RelionPyError("symmetry definition does not generate a finite point group "
                                f"(more than {limit} operators)")
        pairs = [(i, n) for i in range(n + 1)] + [(n, j) for j in range(n - 1, -1, -1)]
        a = np.array([mats[i] for i, _ in pairs])
        b = np.array([mats[j] for _, j in pairs])
        prods = np.zeros_like(a)
        for k in range(4):             # same accumulation order as Matrix2D::operator*
            prods = prods + a[:, :, k:k + 1] * b[:, k:k + 1, :]
        pp = np.array([par[i] * par[j] for i, j in pairs])
        # duplicate test against the matrices stored before this shell, all pairs at once
        stack = np.array(mats)
        close = np.all(np.abs(prods[:, None] - stack[None]) <= EQUAL_ACCURACY, axis=(2, 3))
        dup = np.any(close & (pp[:, None] == np.array(par)[None, :]), axis=1)
        is_id = (pp == 1) & np.all(np.abs(prods[:, :3, :3] - eye3) <= EQUAL_ACCURACY, axis=(1, 2))
        n_before = len(mats)
        for q in range(len(pairs)):
            if is_id[q] or dup[q]:
                continue
            prod = prods[q]
            p = int(pp[q])
            if any(par[m] == p and np.all(np.abs(mats[m] - prod) <= EQUAL_ACCURACY)
                   for m in range(n_before, len(mats))):
                continue
            new = prod.copy()
            new[np.abs(new) < EQUAL_ACCURACY] = 0.0
            mats.append(new)
            par.append(p)
        n += 1
    return par, mats


@lru_cache(maxsize=64)
def _operators_cached(lines: tuple[str, ...]) -> np.ndarray:
    _, mats = _compute_subgroup(_generators(list(lines)))
    if not mats:
        return np.zeros((0, 3, 3), dtype=np.float64)
    out = np.array([m[:3, :3] for m in mats], dtype=np.float64)
    out.setflags(write=False)
    return out


def point_group_operators(name: str, include_identity: bool = False) -> np.ndarray:
    """Rotation (or improper rotation) matrices of a point group, as RELION lists them.

    Mirrors ``SymList::read_sym_file(name)`` followed by ``get_matrices(i, L, R)`` for
    ``i = 0 .. SymsNo()-1`` (the 3x3 part of R), which is what both
    ``Symmetry::getPointGroupMatrices`` (tomo) and ``BackProjector::applyPointGroupSymmetry``
    use.

    Returns an array of shape (order - 1, 3, 3), float64, in RELION's order: first the
    generators in definition order (for an n-fold axis u: the transposes of the active
    rotations about u by 360/n, 2*360/n, ... i.e. rotations by -360/n, -2*360/n, ...;
    inversion -I; mirrors I - 2 n n^T), then the products found by compute_subgroup in its
    visiting order. The identity is **not** included (RELION never stores it; both
    programs treat the unrotated map as the implicit first term). With
    ``include_identity=True`` the identity is prepended, giving shape (order, 3, 3).

    ``name`` is case-insensitive (C1, c4, D2h, I1, ...). As in RELION an existing file of
    that name is read as a symmetry file instead (lines ``rot_axis n x y z``,
    ``mirror_plane x y z``, ``inversion``). Unknown names, order 0, odd S<n> and the
    unimplemented I5/I5h raise :class:`RelionPyError`.
    """
    ops = _operators_cached(tuple(point_group_definition(name)))
    if include_identity:
        return np.concatenate([np.eye(3)[None], ops], axis=0)
    return ops.copy()


def point_group_order(name: str) -> int:
    """Number of operators including the identity (RELION's ``SymsNo() + 1``)."""
    return len(_operators_cached(tuple(point_group_definition(name)))) + 1


def is_c1(name: str) -> bool:
    """relion_tomo_reconstruct_particle's test for "no point-group symmetry": the name is
    exactly ``"C1"`` or ``"c1"`` (``ReconstructParticleProgram::symmetrise``).

    Other spellings of the trivial group (e.g. ``C01``) give an empty operator list, so
    the result is the same apart from whether the symmetrisation pass runs at all.
    """
    return name in ("C1", "c1")
