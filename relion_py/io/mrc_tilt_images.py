"""Tilt-series frames stored in MRC files (one stack, or one file per tilt) behind the
:class:`~relion_py.io.tilt_images.TiltImages` interface."""
import numpy as np

from ..kernels.tomography.windows import gather_clamped_windows
from ..runtime.errors import RelionPyError
from .mrc import mmap_mrc, relion_float16_to_float32
from .tilt_images import TiltImages


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
