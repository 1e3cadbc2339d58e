"""Particle images of a relion_reconstruct STAR file, read as RELION's ``Image<RFLOAT>::read`` does:
``N@stack.mrcs`` slices of an MRC stack, or a whole MRC file (2-D image or 3-D pseudo-subtomogram)."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..runtime.errors import RelionPyError
from .mrc import mmap_mrc, read_mrc_data, relion_float16_to_float32
from .image_names import split_image_name


def image_path(name, img_dir=""):
    """(file, 0-based slice or None) of an rlnImageName; ``img_dir`` replaces its folder (--img)."""
    path, index = split_image_name(name)
    if img_dir:
        path = os.path.join(img_dir, os.path.basename(path))
    return path, (index if "@" in str(name) else None)


class ImageReader:
    """Reads particle images as float64 (RELION's ``Image<RFLOAT>::read``): ``N@stack.mrcs`` slices through
    a per-file memory map (kept open), plain files whole by sequential reads, in the background when announced
    by :meth:`prefetch`. Safe to call from several threads."""

    def __init__(self, img_dir=""):
        self.img_dir = img_dir
        self._maps = {}
        self._lock = threading.Lock()
        self._ahead = {}            # (read or read_raw, name) → Future of the announced whole-file reads
        self._pool = None

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
        if index is None:
            data = self._announced("read", name)
            return _whole_image(path) if data is None else data
        m = self._map(path)
        if index >= m.shape[0]:
            raise RelionPyError(f"image {name}: {path} holds only {m.shape[0]} images")
        return _as_double(_finite(m[index], f"image {name}"))

    def read_raw(self, name):
        """A whole file (a CTF volume) as float32 or float64, unconverted when possible."""
        data = self._announced("read_raw", name)
        return _whole_raw(image_path(name)[0]) if data is None else data

    def prefetch(self, names, raw_names=()):
        """Announce that the whole-file images ``names`` (:meth:`read`) and files ``raw_names``
        (:meth:`read_raw`) are read next: one background thread reads them (from the disk at its streaming
        speed, and converts them) while the current ones are computed."""
        wanted = [("read", n, _whole_image, image_path(n, self.img_dir)) for n in names]
        wanted += [("read_raw", n, _whole_raw, image_path(n)) for n in raw_names]
        with self._lock:
            for kind, name, load, (path, index) in wanted:
                if index is None and (kind, name) not in self._ahead:
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(1, thread_name_prefix="relion_py_reader")
                    self._ahead[(kind, name)] = self._pool.submit(load, path)

    def _announced(self, kind, name):
        with self._lock:
            future = self._ahead.pop((kind, name), None)
        return None if future is None else future.result()

    def close(self):
        """Stop the background reads and drop what they read."""
        with self._lock:
            for future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _finite(data, what):
    """``data``, unless it holds NaN or Inf values: RELION would spread them over the whole map (0.1 ms for a 96³
    volume, on the reader's background thread for whole files)."""
    if not np.isfinite(data).all():
        raise RelionPyError(f"{what} holds NaN or Inf values")
    return data


def _as_double(data):
    if data.dtype == np.float16:
        data = relion_float16_to_float32(data)
    return data.astype(np.float64)


def _whole_image(path):
    data = _whole_raw(path)
    return _as_double(data[0] if data.shape[0] == 1 else data)


def _whole_raw(path):
    data = _read_whole(path)
    return _finite(relion_float16_to_float32(data) if data.dtype == np.float16 else data, f"image file {path}")


def _read_whole(path):
    return read_mrc_data(_existing(path))


def _mmap(path):
    return mmap_mrc(_existing(path))


def _existing(path):
    if not os.path.exists(path):
        raise RelionPyError(f"image file {path} does not exist (paths in the STAR file are relative to the "
                            "folder you run from)")
    return path
