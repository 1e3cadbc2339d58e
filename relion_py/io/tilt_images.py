"""Tilt-series pixels behind one small interface, so that every program reads MRC stacks, one file per
tilt, or (local or remote) OME-Zarr the same way.

A tilt series is addressed by the ``rlnMicrographName`` column of its tilt-series STAR file, one entry
per frame f (= STAR row f): ``N@stack.mrcs`` (N is 1-based) or a plain image file. Paths are relative
to the working directory (RELION's project folder), like in RELION.
"""
from abc import ABC, abstractmethod

import numpy as np

from ..runtime.errors import RelionPyError
from ..kernels.tomography.windows import gather_clamped_windows
from .mrc import mmap_mrc, relion_float16_to_float32


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


def split_image_name(name):
    """``'N@path'`` → (path, N-1); a plain path → (path, 0). Mirrors RELION's ``N@file`` addressing."""
    name = str(name).strip()
    if "@" in name:
        index, path = name.split("@", 1)
        try:
            n = int(index)
        except ValueError:
            raise RelionPyError(f"bad image name '{name}': expected N@file with an integer N") from None
        if n < 1:
            raise RelionPyError(f"bad image name '{name}': image numbers start at 1")
        return path, n - 1
    return name, 0


def is_zarr_location(path):
    """True for OME-Zarr tilt series (local ``*.zarr`` folders or http(s)/s3 URLs)."""
    return "://" in path or path.rstrip("/").endswith(".zarr")


class MrcTiltImages(TiltImages):
    """Frames stored in MRC files (one stack, or one file per tilt), memory-mapped: only the pixels
    of the requested windows are read from disk."""

    def __init__(self, locations):
        """locations: list of (path, slice index) per frame."""
        self._maps = {}
        self._file_of_frame = []
        self._slice_of_frame = np.empty(len(locations), np.int64)
        sizes = {}
        for f, (path, index) in enumerate(locations):
            if path not in self._maps:
                stack = mmap_mrc(path)
                if stack.dtype == np.float16:   # RELION reads halves with subnormals flushed to zero
                    stack = relion_float16_to_float32(stack)
                elif stack.dtype != np.float32:
                    stack = stack.astype(np.float32)
                self._maps[path] = stack
                sizes[path] = self._maps[path].shape[1:]
            nz = self._maps[path].shape[0]
            if index >= nz:
                raise RelionPyError(f"tilt image {index + 1}@{path} does not exist: the file holds {nz} images")
            self._file_of_frame.append(path)
            self._slice_of_frame[f] = index
        first = locations[0][0]
        for path, shape in sizes.items():
            if shape != sizes[first]:
                raise RelionPyError(f"tilt image {path} is {shape[1]}x{shape[0]} px but {first} is "
                                    f"{sizes[first][1]}x{sizes[first][0]} px: all tilt images must have one size")
        self.n_frames = len(locations)
        self.image_size = (int(sizes[first][1]), int(sizes[first][0]))
        self._file_of_frame = np.array(self._file_of_frame, dtype=object)

    def read_windows(self, frames, origins, out):
        frames = np.asarray(frames, np.int64)
        for path, stack in self._maps.items():
            sel = np.flatnonzero(self._file_of_frame[frames] == path)
            if len(sel) == len(frames):
                gather_clamped_windows(stack, self._slice_of_frame[frames], origins, out)
                return
            if len(sel):
                part = np.empty((len(sel),) + out.shape[1:], np.float32)
                gather_clamped_windows(stack, self._slice_of_frame[frames[sel]], origins[sel], part)
                out[sel] = part

    def pixel_stack(self, frames):
        frames = np.asarray(frames, np.int64)
        if len(self._maps) != 1:
            return None
        return next(iter(self._maps.values())), self._slice_of_frame[frames]

    def close(self):
        self._maps.clear()


def open_tilt_images(micrograph_names):
    """Open the frames named by a tilt-series STAR file's ``rlnMicrographName`` column.

    Dispatches on the location: OME-Zarr (``*.zarr`` folder or URL) or MRC files.
    """
    locations = [split_image_name(n) for n in micrograph_names]
    if not locations:
        raise RelionPyError("tilt series has no images (empty rlnMicrographName column)")
    if any(is_zarr_location(p) for p, _ in locations):
        from .zarr_images import ZarrTiltImages
        return ZarrTiltImages(locations)
    return MrcTiltImages(locations)
