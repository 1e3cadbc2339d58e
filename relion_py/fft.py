"""Orthonormal real 2-D FFTs of tilt-image stacks through FFTW (pyFFTW), between fixed buffers.

The per-tilt FFTs are half the work of extraction and reconstruction; FFTW does them about twice as fast
as scipy's pocketfft here. Plans are made with ``FFTW_ESTIMATE`` — instantly, and deterministically (the
same algorithm, hence the same bits, on every run) — once per stack height and reused. Each
:class:`RealFFT2` belongs to one thread (its buffers are overwritten by every call). Normalisation is
scipy's ``norm="ortho"`` (1/sqrt(h·w) both ways), the convention of every 2-D FFT in this package.
"""
import math

import numpy as np
import pyfftw


class RealFFT2:
    """2-D real FFTs of the first n images of ``real`` (capacity, h, w) float32 to/from ``spectra``
    (capacity, h, w//2+1) complex64, both allocated here, FFTW-aligned."""

    def __init__(self, capacity, height, width):
        self.real = pyfftw.empty_aligned((capacity, height, width), np.float32)
        self.spectra = pyfftw.empty_aligned((capacity, height, width // 2 + 1), np.complex64)
        self.norm = np.float32(1.0 / math.sqrt(height * width))
        self._plans = {}

    def _plan(self, n, direction):
        plan = self._plans.get((n, direction))
        if plan is None:
            if direction == "FFTW_FORWARD":
                plan = pyfftw.FFTW(self.real[:n], self.spectra[:n], axes=(1, 2), direction=direction,
                                   flags=("FFTW_ESTIMATE",), threads=1)
            else:   # multi-dimensional c2r always overwrites its input
                plan = pyfftw.FFTW(self.spectra[:n], self.real[:n], axes=(1, 2), direction=direction,
                                   flags=("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT"), threads=1)
            self._plans[(n, direction)] = plan
        return plan

    def forward(self, n):
        """``rfft2(real[:n], norm="ortho")`` into ``spectra[:n]``, which is returned."""
        if n:
            self._plan(n, "FFTW_FORWARD").execute()
        out = self.spectra[:n]
        out *= self.norm
        return out

    def backward(self, n):
        """``irfft2(spectra[:n], norm="ortho")`` into ``real[:n]`` (``spectra[:n]`` is destroyed), returned."""
        if n:
            self._plan(n, "FFTW_BACKWARD").execute()
        out = self.real[:n]
        out *= self.norm
        return out
