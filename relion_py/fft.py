"""Orthonormal real FFTs of image stacks and volumes through FFTW (pyFFTW), between fixed buffers.

The per-tilt 2-D FFTs and the per-particle 3-D FFTs are a large part of extraction and reconstruction;
FFTW does them about twice as fast as scipy's pocketfft here. Plans are made once per stack height and
reused, with ``FFTW_ESTIMATE`` by default — instantly, and deterministically (the same algorithm, hence
the same bits, on every run). ``measure=True`` uses ``FFTW_MEASURE`` instead, for the one volume shape of
a run (96³: 0.2 s of planning, then 4 ms per transform instead of 8): FFTW then times candidate algorithms,
so the last bits of the result may differ between runs (never within one: plans made later reuse the
wisdom of the first). Each :class:`RealFFT` belongs to one thread (its buffers are overwritten by every
call). Normalisation is scipy's ``norm="ortho"`` (1/sqrt(N) both ways), the convention of every FFT in
this package.
"""
import math

import numpy as np
import pyfftw


class RealFFT:
    """Real FFTs over the last axes of the first n items of ``real`` (capacity, *shape) float32 to/from
    ``spectra`` (capacity, *shape[:-1], shape[-1]//2+1) complex64, both allocated here, FFTW-aligned."""

    def __init__(self, capacity, shape, measure=False):
        shape = tuple(int(v) for v in shape)
        self.real = pyfftw.empty_aligned((capacity,) + shape, np.float32)
        self.spectra = pyfftw.empty_aligned((capacity,) + shape[:-1] + (shape[-1] // 2 + 1,), np.complex64)
        self.axes = tuple(range(1, len(shape) + 1))
        self.norm = np.float32(1.0 / math.sqrt(math.prod(shape)))
        self._flags = ("FFTW_MEASURE",) if measure else ("FFTW_ESTIMATE",)
        self._plans = {}

    def _plan(self, n, direction):
        plan = self._plans.get((n, direction))
        if plan is None:
            if direction == "FFTW_FORWARD":
                plan = pyfftw.FFTW(self.real[:n], self.spectra[:n], axes=self.axes, direction=direction,
                                   flags=self._flags, threads=1)
            else:   # multi-dimensional c2r always overwrites its input
                plan = pyfftw.FFTW(self.spectra[:n], self.real[:n], axes=self.axes, direction=direction,
                                   flags=self._flags + ("FFTW_DESTROY_INPUT",), threads=1)
            self._plans[(n, direction)] = plan
        return plan

    def plan(self, n):
        """Make the plans for n items now (planning overwrites the buffers)."""
        self._plan(n, "FFTW_FORWARD")
        self._plan(n, "FFTW_BACKWARD")

    def forward(self, n, columns=None):
        """``rfftn(real[:n], norm="ortho")`` over the item axes into ``spectra[:n]``, which is returned.

        columns: only the first ``columns`` columns (last axis) of the 2-D spectra are wanted (Fourier
        cropping keeps the low frequencies): the transform along the other axis is then done on those
        columns only, and the returned view has them only.
        """
        width = self.spectra.shape[-1]
        if columns is None or columns >= width or len(self.axes) != 2:
            if n:
                self._plan(n, "FFTW_FORWARD").execute()
            out = self.spectra[:n]
        else:
            out = self.spectra[:n, :, :columns]
            if n:
                self._pruned_plans(n, columns)
                for plan in self._plans[(n, columns)]:
                    plan.execute()
        out *= self.norm
        return out

    def _pruned_plans(self, n, columns):
        """Rows (r2c along x), then only the wanted columns (c2c along y, in place)."""
        if (n, columns) not in self._plans:
            rows = pyfftw.FFTW(self.real[:n], self.spectra[:n], axes=(2,), direction="FFTW_FORWARD",
                               flags=self._flags, threads=1)
            part = self.spectra[:n, :, :columns]
            cols = pyfftw.FFTW(part, part, axes=(1,), direction="FFTW_FORWARD", flags=self._flags, threads=1)
            self._plans[(n, columns)] = (rows, cols)

    def backward(self, n):
        """``irfftn(spectra[:n], norm="ortho")`` into ``real[:n]`` (``spectra[:n]`` is destroyed), returned."""
        if n:
            self._plan(n, "FFTW_BACKWARD").execute()
        out = self.real[:n]
        out *= self.norm
        return out
