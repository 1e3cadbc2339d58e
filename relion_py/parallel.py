"""Per-particle work on a pool of threads, and output files written behind it.

Each worker thread carries one particle at a time from tilt-series pixels to its finished output (window,
FFT, weighting, insertion): its arrays stay in the core's cache, and no thread waits for a whole batch
to finish. This scales because everything a particle needs runs without the GIL — the Numba kernels are
compiled ``nogil`` and scipy's FFTs release it — so the kernels themselves are serial and the thread
count is chosen here, once.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor

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


class OneBehindWriter:
    """Runs the writes of result i on a background thread while later results are computed; at most one
    write waits, so memory stays bounded. Errors of the writer are re-raised in the calling thread."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relion_py_writer")
        self.pending = None

    def submit(self, fn, *args, **kwargs):
        self.wait()
        self.pending = self.pool.submit(fn, *args, **kwargs)

    def wait(self):
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def close(self):
        try:
            self.wait()
        finally:
            self.pool.shutdown(wait=True)
