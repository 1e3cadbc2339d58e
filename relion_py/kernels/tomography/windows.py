"""Reading square windows out of tilt images, with RELION's edge replication."""
import numpy as np

from .._jit import njit
from ..prefetch import prefetch


#: rows of a window prefetched ahead of the row being copied
PREFETCH_ROWS = 16


@njit(inline="always")
def _row_start(slices, origins, i, y, height, width, size):
    """Flat index of row y of window i, or -1 if the window is not wholly inside its image."""
    x0, y0 = origins[i, 0], origins[i, 1]
    if x0 >= 0 and y0 >= 0 and x0 + size <= width and y0 + size <= height:
        return (slices[i] * height + y0 + y) * width + x0
    return -1


@njit
def _gather_clamped_windows(stack, slices, origins, out):
    n, height, width = slices.shape[0], stack.shape[1], stack.shape[2]
    size = out.shape[1]
    flat = stack.reshape(-1)
    for i in range(n):
        img = stack[slices[i]]
        x0, y0 = origins[i, 0], origins[i, 1]
        if x0 >= 0 and y0 >= 0 and x0 + size <= width and y0 + size <= height:
            # inside the image: plain row copies (vectorised). The rows lie a page apart in wide images, so
            # each costs a TLB miss unless prefetched well ahead (into the next window near the end)
            for y in range(size):
                j, ya = i, y + PREFETCH_ROWS
                if ya >= size:
                    j, ya = i + 1, ya - size
                if j < n and ya < size:
                    ahead = _row_start(slices, origins, j, ya, height, width, size)
                    if ahead >= 0:
                        for x in range(0, size, 16):
                            prefetch(flat, ahead + x)
                row = img[y0 + y]
                for x in range(size):
                    out[i, y, x] = row[x0 + x]
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
