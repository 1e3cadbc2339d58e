"""Per-particle work on a pool of threads, and output files written behind it.

Each worker thread carries one particle at a time from tilt-series pixels to its finished output (window,
FFT, weighting, insertion): its arrays stay in the core's cache, and no thread waits for a whole batch
to finish. This scales because everything a particle needs runs without the GIL — the Numba kernels are
compiled ``nogil`` and execute the FFTW plans themselves — so the kernels are serial and the thread count is
chosen here, once.
"""
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

#: tasks in flight per worker: enough to keep every worker busy while results are consumed in order
AHEAD = 3


def map_in_order(fn, n_tasks, threads):
    """Yield ``fn(0), fn(1), ..., fn(n_tasks - 1)`` in that order, computed on ``threads`` threads (on the
    calling thread if ``threads`` is 1). At most ``AHEAD · threads`` results exist at any time, so memory
    does not grow with ``n_tasks``. An exception in ``fn`` is re-raised here and stops the remaining tasks."""
    if threads <= 1:
        for k in range(n_tasks):
            yield fn(k)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="relion_py_worker") as pool:
        pending = deque()
        try:
            for k in range(n_tasks):
                pending.append(pool.submit(fn, k))
                if len(pending) >= AHEAD * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@contextmanager
def numba_threads(n):
    """Numba's thread count for its parallel kernels, within the block (the setting belongs to the calling
    thread: a Dask worker's task thread sets its own)."""
    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(old)


class PerThread:
    """One object per thread, made by ``factory()`` on the thread's first :meth:`get` (a worker's buffers)."""

    def __init__(self, factory):
        self._factory = factory
        self._local = threading.local()

    def get(self):
        obj = getattr(self._local, "obj", None)
        if obj is None:
            obj = self._local.obj = self._factory()
        return obj


class BackgroundWriter:
    """Runs output writes on background threads while later results are computed. Up to ``max_pending``
    writes per thread wait in its queue, so that a write held up by the disk does not stall the workers,
    and memory stays bounded: at most ``max_bytes`` of array arguments wait (always at least one write),
    so that large outputs (3-D pseudo-subtomograms, 7 MB a particle at 96³) do not pile up when the disk
    is the bound. Two threads: creating a file and writing it directly both wait on the file system and
    the disk, and two writes in flight hide that wait (2-D stacks of case c: 10.1 s instead of 11.1 s)
    without slowing large sequential writes (3-D case b: 47.3 s either way); four measured slower.
    Errors of a write are re-raised in the calling thread."""

    def __init__(self, threads=2, max_pending=4, max_bytes=16 * 2**20):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="relion_py_writer")
        self.pending = deque()          # (future, bytes of its array arguments)
        self.max_pending = max_pending * threads
        self.max_bytes = max_bytes
        self.pending_bytes = 0

    def submit(self, fn, *args, **kwargs):
        size = sum(a.nbytes for a in args if isinstance(a, np.ndarray))
        while self.pending and (len(self.pending) >= self.max_pending
                                or self.pending_bytes + size > self.max_bytes):
            self._finish_oldest()
        self.pending.append((self.pool.submit(fn, *args, **kwargs), size))
        self.pending_bytes += size

    def _finish_oldest(self):
        future, size = self.pending.popleft()
        self.pending_bytes -= size
        future.result()

    def wait(self):
        while self.pending:
            self._finish_oldest()

    def close(self):
        try:
            self.wait()
        finally:
            for future, _ in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)
