"""Reading square windows out of tilt images, with RELION's edge replication."""
import numpy as np

from ._jit import njit


@njit
def _gather_clamped_windows(stack, slices, origins, out):
    height, width = stack.shape[1], stack.shape[2]
    size = out.shape[1]
    for i in range(slices.shape[0]):
        img = stack[slices[i]]
        x0, y0 = origins[i, 0], origins[i, 1]
        if x0 >= 0 and y0 >= 0 and x0 + size <= width and y0 + size <= height:
            for y in range(size):                  # inside the image: plain row copies (vectorised)
                out[i, y, :] = img[y0 + y, x0:x0 + size]
            continue
        for y in range(size):
            yy = min(max(y + y0, 0), height - 1)
            for x in range(size):
                xx = min(max(x + x0, 0), width - 1)
                out[i, y, x] = img[yy, xx]


def gather_clamped_windows(stack, slices, origins, out):
    """Copy square windows out of a stack of images, clamping coordinates to the image (edge
    replication, not zero padding).

    Mirrors the pixel loop of ``TomoExtraction::extractSquares`` (src/jaz/tomography/extraction.h).
    stack:   (n_slices, H, W) float32 (may be a read-only memory map)
    slices:  (n,) int64, slice of ``stack`` for each window
    origins: (n, 2) int64, (x0, y0) of each window's pixel (0, 0) in image pixels
    out:     (n, size, size) float32, written in place
    """
    if len(slices):
        _gather_clamped_windows(stack, np.ascontiguousarray(slices, np.int64),
                                np.ascontiguousarray(origins, np.int64), out)
