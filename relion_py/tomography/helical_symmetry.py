"""RELION's helical symmetry operators, and the operator list of relion_tomo_reconstruct_particle.

Helical operators mirror ``Symmetry::getHelicalSymmetryMatrices`` (src/jaz/image/symmetry.cpp, used by
relion_tomo_reconstruct_particle) and the operator loop of ``BackProjector::applyHelicalSymmetry``
(src/backprojector.cpp, used by relion_reconstruct); rotations are built with RELION's own operation order
(:mod:`.symmetry`'s helpers), so that they are bit-identical to RELION's.
"""
import numpy as np

from .symmetry import is_c1, point_group_operators, rotation_z, set_small_to_zero



def helical_hh(nr_helical_asu: int) -> np.ndarray:
    """The helical unit indices hh RELION loops over, identity (hh = 0) excluded.

    hh runs from -floor(n/2) to -floor(n/2) + n - 1 in increasing order, skipping 0; this
    is both the order of ``getHelicalSymmetryMatrices``' output and the loop order of
    ``BackProjector::applyHelicalSymmetry``. Returns int64 array of length n - 1 (empty
    for n < 2).
    """
    n = int(nr_helical_asu)
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    h_min = -(n // 2)
    h_max = -h_min + n % 2
    return np.array([hh for hh in range(h_min, h_max) if hh != 0], dtype=np.int64)


def helical_symmetry_matrices(nr_helical_asu: int, twist_deg: float, rise_px: float) -> np.ndarray:
    """Mirror of ``Symmetry::getHelicalSymmetryMatrices(units, twist, rise)`` (jaz; used by
    relion_tomo_reconstruct_particle with ``rise = helical_rise / binned output pixel size``).

    Returns (n - 1, 4, 4) float64, one matrix per hh of :func:`helical_hh` in that order:
    the 3x3 block is ``rotation3DMatrix(hh * (-twist), 'Z')`` = [[c, -s, 0], [s, c, 0],
    [0, 0, 1]] for the angle hh*(-twist) degrees (small values are **not** zeroed here),
    the translation column is (0, 0, -hh * rise_px) in element [2, 3], and row 3 is zero
    (including [3, 3], as in the d4Matrix RELION builds).

    The tomo symmetriser applies it to k = (x, y, z, 0) (translation ignored for the
    position) and multiplies the interpolated data by exp(i * 2 pi * (x/w*t_x + y/h*t_y +
    z/d*t_z)) with t = column 3.

    Pass twist/rise as RELION holds them: the CLI parses --helical_twist/--helical_rise
    with textToFloat, i.e. rounded to float32 and then widened to double.
    """
    hhs = helical_hh(nr_helical_asu)
    out = np.zeros((len(hhs), 4, 4), dtype=np.float64)
    for idx, hh in enumerate(hhs):
        r = rotation_z(float(int(hh)) * (-float(twist_deg)))
        for i in range(3):
            for j in range(3):
                out[idx, i, j] = r[i][j]
        out[idx, 2, 3] = float(-int(hh)) * float(rise_px)
    return out


def helical_rotations(nr_helical_asu: int, twist_deg: float,
                      zero_small_values: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The helical operators as ``BackProjector::applyHelicalSymmetry`` (relion_reconstruct)
    builds them: for each hh of :func:`helical_hh`, ``rotation3DMatrix(hh * (-twist), 'Z')``
    followed by ``setSmallValuesToZero()`` (|v| < 1e-6 -> 0; pass
    ``zero_small_values=False`` for the un-zeroed jaz variant).

    Returns ``(hh, R)`` with hh int64 (n - 1,) and R float64 (n - 1, 3, 3). The z
    translation is not a matrix element in relion_reconstruct: its kernel multiplies the
    interpolated value (when |rise| > 0) by exp(i * 2 pi * z * zshift) with
    ``zshift = (hh * rise_px) / (-(N) * padding_factor)``, z the output voxel's logical z
    and ``rise_px = helical_rise / angpix``.
    """
    hhs = helical_hh(nr_helical_asu)
    out = np.zeros((len(hhs), 3, 3), dtype=np.float64)
    for idx, hh in enumerate(hhs):
        r = rotation_z(float(int(hh)) * (-float(twist_deg)))
        if zero_small_values:
            set_small_to_zero(r)
        out[idx] = np.array(r)[:3, :3]
    return hhs, out


def tomo_symmetry_matrices(sym: str, nr_helical_asu: int = 1, helical_twist: float = 0.0,
                           helical_rise_px: float = 0.0) -> np.ndarray:
    """The operator list of ``ReconstructParticleProgram::symmetrise`` (tomo, part A).

    Point-group matrices (``Symmetry::getPointGroupMatrices``: 3x3 block of each stored R,
    zero translation, zero row 3) unless :func:`is_c1` (sym), then, if nr_helical_asu > 1,
    the helical matrices of :func:`helical_symmetry_matrices` appended. The two lists are
    concatenated, not composed. ``helical_rise_px`` is helical_rise / binned output pixel
    size. Returns (m, 4, 4) float64; m = 0 means the program skips symmetrisation (test
    with ``is_c1(sym) and nr_helical_asu <= 1`` to decide as RELION does).
    """
    parts = []
    if not is_c1(sym):
        pg = point_group_operators(sym)
        m = np.zeros((len(pg), 4, 4), dtype=np.float64)
        m[:, :3, :3] = pg
        parts.append(m)
    if nr_helical_asu > 1:
        parts.append(helical_symmetry_matrices(nr_helical_asu, helical_twist, helical_rise_px))
    if not parts:
        return np.zeros((0, 4, 4), dtype=np.float64)
    return np.concatenate(parts, axis=0)
