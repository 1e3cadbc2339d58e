"""Tilt-series pixels behind one small interface, so that every program reads MRC stacks, one file per
tilt, or (local or remote) OME-Zarr the same way.

A tilt series is addressed by the ``rlnMicrographName`` column of its tilt-series STAR file, one entry
per frame f (= STAR row f): ``N@stack.mrcs`` (N is 1-based) or a plain image file. Paths are relative
to the working directory (RELION's project folder), like in RELION.

This module holds the interface alone; the readers are :mod:`.mrc_tilt_images` and :mod:`.zarr_images`, and
:func:`relion_py.io.open_tilt_images.open_tilt_images` picks one for a tilt series.
"""
from abc import ABC, abstractmethod


class TiltImages(ABC):
    """Read access to the frames of one tilt series.

    Attributes: ``n_frames`` (int) and ``image_size`` ((W, H) ints, the same for every frame).
    """

    n_frames: int
    image_size: tuple

    @abstractmethod
    def read_windows(self, frames, origins, out):
        """Fill ``out[i]`` with the square window of frame ``frames[i]`` whose pixel (0, 0) is image
        pixel ``origins[i] = (x0, y0)``; pixels outside the image take the value of the nearest edge
        pixel (RELION's clamping).

        frames: (n,) int64; origins: (n, 2) int64; out: (n, size, size) float32, written in place.
        """

    def prefetch(self, frames, origins, size):
        """A hint: the windows of ``size`` px at ``origins`` of ``frames`` will be read, in this order.
        Remote readers start fetching their pixels; local ones need not do anything."""

    def pixel_stack(self, frames):
        """(stack, slices) if the pixels of ``frames`` are one (n_slices, H, W) float32 array (in memory or
        memory-mapped), frame ``frames[i]`` being ``stack[slices[i]]``, so that compiled code can cut the
        windows itself; None otherwise (use :meth:`read_windows`)."""
        return None

    def close(self):
        """Release files or connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
