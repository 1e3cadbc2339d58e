"""Particle images of a relion_reconstruct STAR file, read as RELION's ``Image<RFLOAT>::read`` does:
``N@stack.mrcs`` slices of an MRC stack, or a whole MRC file (2-D image or 3-D pseudo-subtomogram)."""
import os
import threading

import numpy as np

from ..runtime.errors import RelionPyError
from .mrc import mmap_mrc, relion_float16_to_float32
from .image_names import split_image_name


def image_path(name, img_dir=""):
    """(file, 0-based slice or None) of an rlnImageName; ``img_dir`` replaces its folder (--img)."""
    path, index = split_image_name(name)
    if img_dir:
        path = os.path.join(img_dir, os.path.basename(path))
    return path, (index if "@" in str(name) else None)


class ImageReader:
    """Reads particle images as float64 (RELION's ``Image<RFLOAT>::read``): ``N@stack.mrcs`` slices through
    a per-file memory map (kept open), plain files whole. Safe to call from several threads."""

    def __init__(self, img_dir=""):
        self.img_dir = img_dir
        self._maps = {}
        self._lock = threading.Lock()

    #: Stack files kept memory-mapped at a time (each holds a file descriptor; particles usually come
    #: grouped by stack, so the most recently opened ones are kept).
    MAX_OPEN = 64

    def _map(self, path):
        with self._lock:
            m = self._maps.pop(path, None)
            if m is None:
                m = _mmap(path)
                while len(self._maps) >= self.MAX_OPEN:
                    self._maps.pop(next(iter(self._maps)))
            self._maps[path] = m            # most recently used last
        return m

    def shape(self, name):
        """(ndim, size) of an image from its header."""
        path, index = image_path(name, self.img_dir)
        m = self._map(path) if index is not None else _mmap(path)
        return (2, m.shape[1:]) if index is not None or m.shape[0] == 1 else (3, m.shape)

    def read(self, name):
        path, index = image_path(name, self.img_dir)
        if index is not None:
            m = self._map(path)
            if index >= m.shape[0]:
                raise RelionPyError(f"image {name}: {path} holds only {m.shape[0]} images")
            data = m[index]
        else:
            data = _mmap(path)
            if data.shape[0] == 1:
                data = data[0]
        if data.dtype == np.float16:
            data = relion_float16_to_float32(data)
        return data.astype(np.float64)

    def read_raw(self, name):
        """A whole file (a CTF volume) as float32 or float64, unconverted when possible."""
        path, _ = image_path(name)
        data = _mmap(path)
        if data.dtype == np.float16:
            data = relion_float16_to_float32(data)
        return data


def _mmap(path):
    if not os.path.exists(path):
        raise RelionPyError(f"image file {path} does not exist (paths in the STAR file are relative to the "
                            "folder you run from)")
    return mmap_mrc(path)
