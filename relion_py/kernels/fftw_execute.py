"""FFTW plans executed from compiled code: ``fftwf_execute`` called by Numba functions, without the GIL.

Plans are made (and destroyed) by :class:`relion_py.runtime.fftw_plans.RealFFT` through FFTW's C interface; kernels
receive them as integer handles. The library is the single-precision FFTW that the ``pyfftw`` wheel ships
(or the system's ``libfftw3f``); only its C interface is used. It is loaded when this module is imported,
so that compiled (and cached) code can call it by name.
"""
import ctypes
import ctypes.util
import glob
import importlib.util
import os
from collections import namedtuple

import llvmlite.binding
from numba import types

from ..runtime.errors import RelionPyError
from ._jit import njit


def _find_fftw(threads=False):
    """Path of single-precision FFTW (with ``threads``: of its threads library), the copy bundled in the pyfftw
    wheel, else the system's; None if ``threads`` and there is none."""
    name = "fftw3f_omp" if threads else "fftw3f"
    spec = importlib.util.find_spec("pyfftw")
    if spec is not None and spec.submodule_search_locations:
        package = spec.submodule_search_locations[0]
        for pattern in (f"../pyfftw.libs/lib{name}-*.so*", f".dylibs/lib{name}*.dylib", f"lib{name}*.dll"):
            found = sorted(glob.glob(os.path.join(package, pattern)))
            if found:
                return os.path.normpath(found[0])
    path = ctypes.util.find_library(name) or (ctypes.util.find_library("fftw3f_threads") if threads else None)
    if path is None and not threads:
        raise RelionPyError("single-precision FFTW (libfftw3f) was not found: install pyfftw (pip install pyfftw)")
    return path


def _init_threads():
    """``fftwf_init_threads()``, as importing pyfftw does. It registers FFTW's threaded algorithms with the
    planner, which changes the plans FFTW_MEASURE picks (and so the last bits of results) even for plans on one
    thread: every relion_py process does it, so that a process that also imported pyfftw (the CCP-EM pipeliner
    does) and one that did not plan alike. Idempotent in FFTW."""
    path = _find_fftw(threads=True)
    if path is None:
        return
    # the wheel's OpenMP runtime, next to it, is found through pyfftw's extension module's RPATH, not this one's
    for gomp in sorted(glob.glob(os.path.join(os.path.dirname(path), "libgomp-*.so*"))):
        ctypes.CDLL(gomp, mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(path).fftwf_init_threads()


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
    lib.fftwf_export_wisdom_to_string.argtypes, lib.fftwf_export_wisdom_to_string.restype = [], ptr
    lib.fftwf_free.argtypes, lib.fftwf_free.restype = [ptr], None
    lib.fftwf_import_wisdom_from_filename.argtypes = [ctypes.c_char_p]
    lib.fftwf_import_wisdom_from_filename.restype = c_int
    _init_threads()
    return lib


library = _load_fftw()
execute = types.ExternalFunction("fftwf_execute", types.void(types.intp))

RealFFTPlans = namedtuple("RealFFTPlans", ["real", "spectra", "real_flat", "spectra_flat", "forward", "backward",
                                           "norm"])
RealFFTPlans.__doc__ = """A :class:`relion_py.runtime.fftw_plans.RealFFT` as compiled code takes it (a Numba named tuple):
real (capacity, *shape) float32 and spectra (capacity, *half) complex64, the buffers; real_flat (capacity, -1)
and spectra_flat (capacity, -1) float32 ((re, im) pairs), the same memory per item; forward (capacity, 2) and
backward (capacity or 0, 1) intp plan handles (0: none), for :func:`execute_item`; norm, the float32 scale
1/sqrt(N) of both directions."""


@njit(inline="always")
def execute_item(plans, i, flat, norm):
    """Execute the plans ``plans[i, :]`` (0: none) of item i, then scale its output ``flat[i]`` by norm."""
    for j in range(plans.shape[1]):
        if plans[i, j] != 0:
            execute(plans[i, j])
    item = flat[i]
    for x in range(item.size):
        item[x] *= norm


@njit
def execute_items(plans, n, flat, norm):
    """:func:`execute_item` for items 0..n-1."""
    for i in range(n):
        execute_item(plans, i, flat, norm)
