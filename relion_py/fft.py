"""Orthonormal real FFTs of image stacks and volumes through FFTW, between fixed buffers.

The per-tilt 2-D FFTs and the per-particle 3-D FFTs are a large part of extraction and reconstruction;
FFTW does them about twice as fast as scipy's pocketfft here. Each item of a stack has its own plans, made
with ``FFTW_MEASURE`` when the buffers are allocated (planning overwrites them). Single-item measured plans
beat batched estimated ones by a third (128² r2c: 39 µs instead of 57), and the number of items per call
(a particle's visible tilts) can vary freely. Only the first plan of a shape is measured — the others
reuse FFTW's wisdom — so planning costs a fraction of a second per run. FFTW times candidate algorithms
while measuring, so the last bits of a result may differ between runs (never within one: every plan of a
shape follows the first one's wisdom).

The plans are executed from compiled code (``fftwf_execute`` called by a Numba function, without the GIL):
a particle's 41 tilts cost one call from Python instead of one per tilt and plan, which kept the worker
threads queuing for the GIL. The FFTW library is the single-precision one that the ``pyfftw`` wheel ships
(or the system's ``libfftw3f``); only its C interface is used.

Each :class:`RealFFT` belongs to one thread (its buffers are overwritten by every call). Normalisation is
scipy's ``norm="ortho"`` (1/sqrt(N) both ways), the convention of every FFT in this package.
"""
import ctypes
import ctypes.util
import glob
import importlib.util
import math
import os
import threading
import weakref

import llvmlite.binding
import numba
import numpy as np
from numba import types

from .errors import RelionPyError

FFTW_MEASURE, FFTW_DESTROY_INPUT = 0, 1
FFTW_FORWARD = -1
ALIGNMENT = 64                   # bytes: every item of every buffer starts SIMD-aligned
_planner = threading.Lock()      # FFTW's planner is not thread-safe (execution is)


def _find_fftw():
    """Path of single-precision FFTW: the copy bundled in the pyfftw wheel, else the system's."""
    spec = importlib.util.find_spec("pyfftw")
    if spec is not None and spec.submodule_search_locations:
        package = spec.submodule_search_locations[0]
        for pattern in ("../pyfftw.libs/libfftw3f-*.so*", ".dylibs/libfftw3f*.dylib", "libfftw3f*.dll"):
            found = sorted(glob.glob(os.path.join(package, pattern)))
            if found:
                return os.path.normpath(found[0])
    path = ctypes.util.find_library("fftw3f")
    if path is None:
        raise RelionPyError("single-precision FFTW (libfftw3f) was not found: install pyfftw (pip install pyfftw)")
    return path


def _load_fftw():
    path = _find_fftw()
    lib = ctypes.CDLL(path)
    llvmlite.binding.load_library_permanently(path)     # lets compiled (and cached) code call it by name
    n_ptr, ptr, c_int = ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int
    many = [c_int, n_ptr, c_int, ptr, n_ptr, c_int, c_int, ptr, n_ptr, c_int, c_int]
    for name, extra in (("fftwf_plan_many_dft_r2c", []), ("fftwf_plan_many_dft_c2r", []),
                        ("fftwf_plan_many_dft", [c_int])):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = many + extra + [ctypes.c_uint], ptr
    lib.fftwf_destroy_plan.argtypes, lib.fftwf_destroy_plan.restype = [ptr], None
    return lib


_lib = _load_fftw()
_execute = types.ExternalFunction("fftwf_execute", types.void(types.intp))


@numba.njit(nogil=True, cache=True)
def _execute_scaled(plans, n, flat, norm):
    """Execute plans[i, :] (0: none) on item i, then scale that item's output ``flat[i]`` by norm, i < n."""
    for i in range(n):
        for j in range(plans.shape[1]):
            if plans[i, j] != 0:
                _execute(plans[i, j])
        item = flat[i]
        for x in range(item.size):
            item[x] *= norm


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
    fn = getattr(_lib, "fftwf_plan_many_dft" + kind)
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
                _lib.fftwf_destroy_plan(int(plan))


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
        self._spectra_flat = self.spectra.reshape(capacity, -1).view(np.float32)
        self.norm = np.float32(1.0 / math.sqrt(math.prod(shape)))
        width = half[-1]
        self.columns = columns if columns is not None and columns < width and len(shape) == 2 else None
        self._forward = np.zeros((capacity, 2), np.intp)
        self._backward = np.zeros((capacity if inverse else 0, 1), np.intp)
        self._finalizer = weakref.finalize(self, _destroy, self._forward, self._backward)
        with _planner:
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

    def forward(self, n):
        """``rfftn(real[:n], norm="ortho")`` over the item axes into ``spectra[:n]``, which is returned
        (only its first ``columns`` columns if those were asked for)."""
        _execute_scaled(self._forward, n, self._spectra_flat, self.norm)
        return self.spectra[:n] if self.columns is None else self.spectra[:n, :, :self.columns]

    def backward(self, n):
        """``irfftn(spectra[:n], norm="ortho")`` into ``real[:n]`` (``spectra[:n]`` is destroyed), returned."""
        _execute_scaled(self._backward, n, self._real_flat, self.norm)
        return self.real[:n]
