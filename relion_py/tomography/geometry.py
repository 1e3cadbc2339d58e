"""Geometry shared by every program: Euler matrices, tilt projection matrices, particle positions,
visibility. Plain numpy in double precision (these are per-particle / per-tilt scalars, not pixels).

Conventions: 3-D points are in unbinned tilt-series pixels ("ts px"), 0-based, (x, y, z).
"""
import numpy as np



def deg2rad(degrees):
    """RELION's ``DEG2RAD(d) = d·PI/180``, evaluated as (d·π)/180: d·(π/180) differs in the last bit for
    some angles, and relion_reconstruct's insertion radius test depends on those bits."""
    return np.asarray(degrees, dtype=np.float64) * np.pi / 180.0


def euler_to_matrix(rot, tilt, psi):
    """RELION's ZYZ Euler matrix, maps reference coordinates to particle coordinates.

    Mirrors ``Euler_angles2matrix`` (src/euler.cpp) / ``Euler::anglesToMatrix3``, including its
    evaluation order (cγ·(cβ·cα), not (cγ·cβ)·cα), which matters bit for bit in relion_reconstruct.
    rot, tilt, psi: degrees, scalars or arrays of shape (n,). Returns (..., 3, 3) float64.
    """
    a, b, g = deg2rad(rot), deg2rad(tilt), deg2rad(psi)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(np.shape(a) + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(m):
    """(rot, tilt, psi) in degrees of a RELION Euler matrix (``Euler::matrixToAngles``).

    m: (..., 3, 3). Returns three arrays of shape (...).
    """
    m = np.asarray(m, dtype=np.float64)
    a02, a12, a22 = m[..., 0, 2], m[..., 1, 2], m[..., 2, 2]
    sxy = a02 * a02 + a12 * a12
    tilt = np.arctan2(np.sqrt(sxy), a22)
    general = sxy > np.finfo(np.float64).tiny  # RELION tests against DBL_MIN
    rot = np.where(general, np.arctan2(m[..., 2, 1], m[..., 2, 0]), 0.0)
    psi_degenerate = np.where(a22 > 0, np.arctan2(-m[..., 1, 0], m[..., 0, 0]),
                              np.arctan2(m[..., 1, 0], -m[..., 0, 0]))
    psi = np.where(general, np.arctan2(a12, -a02), psi_degenerate)
    return rot * 180.0 / np.pi, tilt * 180.0 / np.pi, psi * 180.0 / np.pi   # RELION's RAD2DEG


def axis_rotation(axis, degrees):
    """Active right-handed rotation about the x, y or z axis ("x"/"y"/"z"), angles in degrees.

    Mirrors ``t3Matrix::rotation`` (Rodrigues formula). degrees: (n,) → (n, 3, 3).
    """
    t = deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    one, zero = np.ones_like(t), np.zeros_like(t)
    rows = {
        "x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def tilt_projection_matrices(xtilt, ytilt, zrot, shift_x_px, shift_y_px, tomo_size, image_size):
    """Affine 4x4 projection matrices, one per tilt: ``P_f·[p;1] = [R_f(p - c_spec) + c_img + t; 1]``.

    Mirrors ``Tomogram::setProjectionMatrix`` (src/jaz/tomography/tomogram.cpp).
    xtilt, ytilt, zrot: (fc,) degrees; shift_x_px, shift_y_px: (fc,) tilt-series px.
    tomo_size: (w0, h0, d0) ints; image_size: (W, H) ints. The centres use C integer division
    (w0/2 etc.), unlike the float tomogram centre used for centred coordinates (QUIRK).
    Returns (fc, 4, 4) float64 with R_f = Rz(zrot)·Ry(ytilt)·Rx(xtilt) in [:3, :3].
    """
    w0, h0, d0 = (int(v) for v in tomo_size)
    width, height = (int(v) for v in image_size)
    r = axis_rotation("z", zrot) @ axis_rotation("y", ytilt) @ axis_rotation("x", xtilt)
    c_spec = np.array([w0 // 2, h0 // 2, d0 // 2], dtype=np.float64)
    c_img = np.array([width // 2, height // 2, 0], dtype=np.float64)
    t = np.stack([np.asarray(shift_x_px, float), np.asarray(shift_y_px, float),
                  np.zeros(len(r))], axis=-1)
    p = np.zeros((len(r), 4, 4))
    p[:, :3, :3] = r
    p[:, :3, 3] = c_img + t - r @ c_spec
    p[:, 3, 3] = 1.0
    return p


def project(proj, points):
    """Project 3-D points with affine 4x4 matrices: (fc,4,4) x (n,3) → (n, fc, 3) (x, y, depth)."""
    return np.einsum("fij,nj->nfi", proj[:, :3, :3], points) + proj[None, :, :3, 3]


def visible_frames(centres_2d, radius, image_size):
    """Frames in which a particle's circle of ``radius`` px lies strictly inside the tilt image.

    Mirrors ``Tomogram::isVisible``. centres_2d: (n, fc, 2) px; returns (n, fc) bool.
    """
    width, height = image_size
    x, y = centres_2d[..., 0], centres_2d[..., 1]
    return (x > radius) & (x < width - radius) & (y > radius) & (y < height - radius)
