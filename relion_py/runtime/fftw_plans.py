"""Orthonormal real FFTs of image stacks and volumes through FFTW, between fixed buffers.

The per-tilt 2-D FFTs and the per-particle 3-D FFTs are a large part of extraction and reconstruction;
FFTW does them about twice as fast as scipy's pocketfft here. Each item of a stack has its own plans, made
with ``FFTW_MEASURE`` when the buffers are allocated (planning overwrites them). Single-item measured plans
beat batched estimated ones by a third (128² r2c: 39 µs instead of 57), and the number of items per call
(a particle's visible tilts) can vary freely. Only the first plan of a shape is measured — the others
reuse FFTW's wisdom. FFTW times candidate algorithms while measuring, and which one wins can change the
last bits of a result; so the wisdom is also kept between runs, in a file per FFTW build and processor
(:func:`wisdom_path`): every run on a machine then uses the same algorithms and repeats the previous
one's numbers bit for bit, and skips the measuring (about 0.25 s per run). Processes that plan at the same
time (a run's Dask workers, concurrent jobs) take turns through a lock on that file, and each reads the
file before planning: a shape is measured once, by whichever process needs it first, and every process on
the machine then uses its plan — which is what makes a distributed run the single-process run's bytes.

The plans are executed from compiled code (``relion_py.kernels.fftw_execute``, without the GIL): a particle's 41
tilts cost one call from Python instead of one per tilt and plan, which kept the worker threads queuing for
the GIL, and kernels can run a whole tilt image through its FFTs while it is in the core's cache.

Each :class:`RealFFT` belongs to one thread (its buffers are overwritten by every call). Normalisation is
scipy's ``norm="ortho"`` (1/sqrt(N) both ways), the convention of every FFT in this package.
"""
import ctypes
import fcntl
import functools
import hashlib
import math
import os
import platform
import threading
import weakref
from contextlib import contextmanager

import numpy as np

from .errors import RelionPyError
from ..io.atomic import atomic_output
from ..kernels.fftw_execute import RealFFTPlans, execute_items, library

FFTW_MEASURE, FFTW_DESTROY_INPUT = 0, 1
FFTW_FORWARD = -1
ALIGNMENT = 64                   # bytes: every item of every buffer starts SIMD-aligned
_planner = threading.Lock()      # FFTW's planner is not thread-safe (execution is)
_wisdom_saved = None             # the wisdom as read from wisdom_path() before planning (bytes)
_wisdom_file = "unread"          # (inode, mtime, size) of wisdom_path() when last read or written here


@functools.lru_cache(maxsize=None)
def wisdom_path():
    """The file that keeps FFTW's measured plans between runs (looked up once per process):
    ``$XDG_CACHE_HOME/relion_py`` (default ``~/.cache/relion_py``), named after the FFTW build and the
    processor, since measurements made on one are no guide to another (a home folder shared by a cluster's
    different nodes)."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu += next((line for line in fh if line.startswith("model name")), "")
    except OSError:
        cpu += platform.processor()
    build = ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(library, "fftwf_version"))).decode()  # a char[]
    # "threads": the planner has FFTW's threaded algorithms registered (fftw_execute._init_threads)
    key = hashlib.sha1(f"{build} {cpu} threads".encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "relion_py", f"fftwf_wisdom-{key}")


def _wisdom():
    """FFTW's current wisdom, as text (bytes)."""
    text = library.fftwf_export_wisdom_to_string()
    try:
        return ctypes.string_at(text)
    finally:
        library.fftwf_free(text)


@contextmanager
def _shared_wisdom():
    """Plan with the kept wisdom, holding ``_planner`` and the wisdom file's lock (other processes plan in
    turn): read what other processes measured (if the file changed since this process last read or wrote it),
    plan, write back what was measured here. Without a writable cache folder, planning goes on unlocked (and
    measures again next run)."""
    global _wisdom_saved, _wisdom_file
    path = wisdom_path()
    with _planner:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = open(os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock"), "a")
        except OSError:
            lock = None
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            if _file_identity(path) != _wisdom_file:
                if os.path.exists(path):
                    library.fftwf_import_wisdom_from_filename(path.encode())
                _wisdom_file = _file_identity(path)
                _wisdom_saved = _wisdom()
            yield
            _keep_wisdom()
        finally:
            if lock is not None:
                lock.close()            # releases the lock


def _file_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _keep_wisdom():
    """Write the wisdom back if planning added to it. Holding ``_planner`` (and the file's lock). A cache
    folder that cannot be written only means measuring again next run: nothing is raised."""
    global _wisdom_saved, _wisdom_file
    current = _wisdom()
    if current != _wisdom_saved:
        path = wisdom_path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_output(path) as tmp, open(tmp, "wb") as fh:
                fh.write(current)
            _wisdom_file = _file_identity(path)
        except OSError:
            pass
        _wisdom_saved = current


def aligned_empty(shape, dtype):
    """An uninitialised array whose data start at a multiple of ALIGNMENT bytes."""
    dtype = np.dtype(dtype)
    raw = np.empty(math.prod(shape) * dtype.itemsize + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)


def _dims(values):
    return (ctypes.c_int * len(values))(*values)


def _plan_many(kind, n, howmany, src, src_embed, src_stride, src_dist, dst, dst_embed, dst_stride, dst_dist,
               flags, sign=None):
    fn = getattr(library, "fftwf_plan_many_dft" + kind)
    extra = () if sign is None else (sign,)
    plan = fn(len(n), _dims(n), howmany, src.ctypes.data, _dims(src_embed), src_stride, src_dist,
              dst.ctypes.data, _dims(dst_embed), dst_stride, dst_dist, *extra, flags)
    if not plan:
        raise RelionPyError(f"FFTW could not plan a transform of size {tuple(n)}")
    return plan


def _destroy(*tables):
    with _planner:
        for plan in np.concatenate([t.ravel() for t in tables]):
            if plan:
                library.fftwf_destroy_plan(int(plan))


class RealFFT:
    """Real FFTs over the item axes of the first n items of ``real`` (capacity, *shape) float32 to/from
    ``spectra`` (capacity, *shape[:-1], shape[-1]//2+1) complex64, both allocated (and planned) here.

    columns: for 2-D items, only the first ``columns`` columns of the spectra are wanted by ``forward``
    (Fourier cropping keeps the low frequencies): the transform along y is then done on those only.
    inverse: also plan :meth:`backward` (planning costs time; stacks that are only transformed forward skip it).
    """

    def __init__(self, capacity, shape, columns=None, inverse=True):
        shape = tuple(int(v) for v in shape)
        half = shape[:-1] + (shape[-1] // 2 + 1,)
        self.real = aligned_empty((capacity,) + shape, np.float32)
        self.spectra = aligned_empty((capacity,) + half, np.complex64)
        self._real_flat = self.real.reshape(capacity, -1)
        self._spectra_flat = self.spectra.reshape(capacity, -1).view(np.float32)   # (re, im) pairs
        self.norm = np.float32(1.0 / math.sqrt(math.prod(shape)))
        width = half[-1]
        self.columns = columns if columns is not None and columns < width and len(shape) == 2 else None
        self._forward = np.zeros((capacity, 2), np.intp)
        self._backward = np.zeros((capacity if inverse else 0, 1), np.intp)
        self._finalizer = weakref.finalize(self, _destroy, self._forward, self._backward)
        with _shared_wisdom():
            for i in range(capacity):
                real, spectra = self.real[i], self.spectra[i]
                if self.columns is None:
                    self._forward[i, 0] = _plan_many("_r2c", shape, 1, real, shape, 1, 0, spectra, half, 1, 0,
                                                     FFTW_MEASURE)
                else:   # rows (r2c along x), then only the wanted columns (c2c along y, in place)
                    ny, nx = shape
                    self._forward[i, 0] = _plan_many("_r2c", [nx], ny, real, [nx], 1, nx, spectra, [width], 1,
                                                     width, FFTW_MEASURE)
                    self._forward[i, 1] = _plan_many("", [ny], self.columns, spectra, [ny], width, 1, spectra,
                                                     [ny], width, 1, FFTW_MEASURE, sign=FFTW_FORWARD)
                if inverse:   # multi-dimensional c2r always overwrites its input
                    self._backward[i, 0] = _plan_many("_c2r", shape, 1, spectra, half, 1, 0, real, shape, 1, 0,
                                                      FFTW_MEASURE | FFTW_DESTROY_INPUT)

    def kernel_args(self):
        """What compiled code needs to run these FFTs: a :class:`~relion_py.kernels.fftw_execute.RealFFTPlans`."""
        return RealFFTPlans(self.real, self.spectra, self._real_flat, self._spectra_flat, self._forward,
                            self._backward, self.norm)

    def forward(self, n):
        """``rfftn(real[:n], norm="ortho")`` over the item axes into ``spectra[:n]``, which is returned
        (only its first ``columns`` columns if those were asked for)."""
        execute_items(self._forward, n, self._spectra_flat, self.norm)
        return self.spectra[:n] if self.columns is None else self.spectra[:n, :, :self.columns]

    def backward(self, n):
        """``irfftn(spectra[:n], norm="ortho")`` into ``real[:n]`` (``spectra[:n]`` is destroyed), returned."""
        execute_items(self._backward, n, self._real_flat, self.norm)
        return self.real[:n]
