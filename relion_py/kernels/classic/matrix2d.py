"""Matrix helpers of src/matrix2d.h whose evaluation order changes RELION's numbers."""
import numpy as np


def inverse_3x3(a):
    """Inverse of a 3x3 matrix by cofactors, RELION's ``Matrix2D::inv`` for 3x3 (src/matrix2d.h).

    ``backproject2Dto3D`` inverts A with it; the evaluation order decides, for pixels exactly on the insertion
    radius, whether they are inserted, so it is reproduced literally. a: (3, 3) float64. Returns (3, 3) float64.
    """
    a = np.asarray(a, dtype=np.float64)
    c = np.empty((3, 3))
    c[0, 0] = a[2, 2] * a[1, 1] - a[2, 1] * a[1, 2]
    c[0, 1] = -(a[2, 2] * a[0, 1] - a[2, 1] * a[0, 2])
    c[0, 2] = a[1, 2] * a[0, 1] - a[1, 1] * a[0, 2]
    c[1, 0] = -(a[2, 2] * a[1, 0] - a[2, 0] * a[1, 2])
    c[1, 1] = a[2, 2] * a[0, 0] - a[2, 0] * a[0, 2]
    c[1, 2] = -(a[1, 2] * a[0, 0] - a[1, 0] * a[0, 2])
    c[2, 0] = a[2, 1] * a[1, 0] - a[2, 0] * a[1, 1]
    c[2, 1] = -(a[2, 1] * a[0, 0] - a[2, 0] * a[0, 1])
    c[2, 2] = a[1, 1] * a[0, 0] - a[1, 0] * a[0, 1]
    det = a[0, 0] * c[0, 0] + a[1, 0] * c[0, 1] + a[2, 0] * c[0, 2]
    return c / det
