"""Orthonormal real FFTs of image stacks and volumes through FFTW (pyFFTW), between fixed buffers.

The per-tilt 2-D FFTs and the per-particle 3-D FFTs are a large part of extraction and reconstruction;
FFTW does them about twice as fast as scipy's pocketfft here. Each item of a stack has its own plans, made
with ``FFTW_MEASURE`` when the buffers are allocated (planning overwrites them) and executed one item at a
time: single-item measured plans beat batched estimated ones by a third (128² r2c: 39 µs instead of 57),
and the number of items per call (a particle's visible tilts) can vary freely. Only the first plan of a
shape is measured — the others reuse FFTW's wisdom — so planning costs a fraction of a second per run.
FFTW times candidate algorithms while measuring, so the last bits of a result may differ between runs
(never within one: every plan of a shape follows the first one's wisdom).

Each :class:`RealFFT` belongs to one thread (its buffers are overwritten by every call). Normalisation is
scipy's ``norm="ortho"`` (1/sqrt(N) both ways), the convention of every FFT in this package.
"""
import math
import threading

import numpy as np
import pyfftw

FLAGS = ("FFTW_MEASURE",)
_planner = threading.Lock()      # FFTW's planner is not thread-safe


class RealFFT:
    """Real FFTs over the item axes of the first n items of ``real`` (capacity, *shape) float32 to/from
    ``spectra`` (capacity, *shape[:-1], shape[-1]//2+1) complex64, both allocated (and planned) here.

    columns: for 2-D items, only the first ``columns`` columns of the spectra are wanted by ``forward``
    (Fourier cropping keeps the low frequencies): the transform along y is then done on those only.
    inverse: also plan :meth:`backward` (planning costs time; stacks that are only transformed forward skip it).
    """

    def __init__(self, capacity, shape, columns=None, inverse=True):
        shape = tuple(int(v) for v in shape)
        self.real = pyfftw.empty_aligned((capacity,) + shape, np.float32)
        self.spectra = pyfftw.empty_aligned((capacity,) + shape[:-1] + (shape[-1] // 2 + 1,), np.complex64)
        self.norm = np.float32(1.0 / math.sqrt(math.prod(shape)))
        width = self.spectra.shape[-1]
        self.columns = columns if columns is not None and columns < width and len(shape) == 2 else None
        axes = tuple(range(len(shape)))
        with _planner:
            if self.columns is None:
                self._forward = [(pyfftw.FFTW(self.real[i], self.spectra[i], axes=axes, flags=FLAGS, threads=1),)
                                 for i in range(capacity)]
            else:   # rows (r2c along x), then only the wanted columns (c2c along y, in place)
                self._forward = []
                for i in range(capacity):
                    part = self.spectra[i, :, :self.columns]
                    self._forward.append((pyfftw.FFTW(self.real[i], self.spectra[i], axes=(1,), flags=FLAGS,
                                                      threads=1),
                                          pyfftw.FFTW(part, part, axes=(0,), flags=FLAGS, threads=1)))
            # multi-dimensional c2r always overwrites its input
            self._backward = [pyfftw.FFTW(self.spectra[i], self.real[i], axes=axes, direction="FFTW_BACKWARD",
                                          flags=FLAGS + ("FFTW_DESTROY_INPUT",), threads=1)
                              for i in range(capacity if inverse else 0)]

    def forward(self, n):
        """``rfftn(real[:n], norm="ortho")`` over the item axes into ``spectra[:n]``, which is returned
        (only its first ``columns`` columns if those were asked for)."""
        for i in range(n):
            for plan in self._forward[i]:
                plan.execute()
        out = self.spectra[:n] if self.columns is None else self.spectra[:n, :, :self.columns]
        out *= self.norm
        return out

    def backward(self, n):
        """``irfftn(spectra[:n], norm="ortho")`` into ``real[:n]`` (``spectra[:n]`` is destroyed), returned."""
        for i in range(n):
            self._backward[i].execute()
        out = self.real[:n]
        out *= self.norm
        return out
