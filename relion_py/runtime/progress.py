"""Progress where RELION users look: a tqdm bar on a terminal; in a log (the RELION GUI's run.out, a SLURM
log), a progress line every few seconds on stdout, as RELION prints its own progress there; a closing line
per loop with the count, the time and the throughput; and a one-line notice when the numerical kernels are
about to be compiled (the first run of a program after installation takes a few seconds longer)."""
import glob
import os
import sys
import time

import numba
from tqdm import tqdm

#: Seconds between two progress lines in a log.
LOG_PERIOD = 5.0
_noticed = False


def kernels_cached(module):
    """Whether Numba's on-disk cache holds compiled kernels of the kernel ``module`` (a module object): an
    index file (``<module>.<function>-<line>.py3x.nbi``) next to it (``__pycache__``) or under
    ``NUMBA_CACHE_DIR``."""
    stem = module.__name__.rsplit(".", 1)[-1]
    places = [os.path.join(os.path.dirname(os.path.abspath(module.__file__)), "__pycache__")]
    if numba.config.CACHE_DIR:
        places.append(os.path.join(numba.config.CACHE_DIR, "**"))
    return any(glob.glob(os.path.join(p, f"{stem}.*.nbi"), recursive=True) for p in places)


def notice_compilation(module, stream=None):
    """Print, once per process, that the kernels are being compiled if the cache holds none of ``module``'s
    (the kernel module of the running program) yet."""
    global _noticed
    if not _noticed and not kernels_cached(module):
        print(" ■ Compiling the numerical kernels (first run after installation only, a few seconds) ...",
              file=stream or sys.stdout, flush=True)
    _noticed = True


class Progress:
    """``with Progress("Extracting TS_01", total, kernels=extraction) as bar: bar.advance(k)``: a tqdm bar on
    stderr if it is a terminal, else progress lines on stdout every ``LOG_PERIOD`` seconds; a closing line
    either way. ``kernels``: the kernel module the loop runs, for the compile notice."""

    def __init__(self, label, total, unit="particles", stream=None, log=None, kernels=None):
        self.label, self.total, self.unit, self.done = label, max(int(total), 0), unit, 0
        self.stream = stream or sys.stderr
        self.log = log or sys.stdout
        self.start = self._last = time.monotonic()
        self.bar = None
        if kernels is not None:
            notice_compilation(kernels, self.log)
        if self.stream.isatty() and self.total > 0:
            self.bar = tqdm(total=self.total, desc=label, unit=unit.rstrip("s"), file=self.stream, leave=False,
                            dynamic_ncols=True)

    def advance(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= LOG_PERIOD and self.done < self.total:
            self._last = now
            line = tqdm.format_meter(self.done, self.total, now - self.start, prefix=self.label,
                                     unit=self.unit.rstrip("s"), ncols=100)
            print(f" ■ {line}", file=self.log, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        if exc[0] is None and self.total > 0:
            seconds = time.monotonic() - self.start
            print(f" ■ {self.label}: {self.done} {self.unit} in {seconds:.1f} s "
                  f"({self.done / max(seconds, 1e-9):.1f} {self.unit}/s)", file=self.log, flush=True)


def summary(what, count, unit, start, stream=None):
    """A program's closing line on stdout: ``what``, then the time since ``start`` (``time.monotonic()``)
    and the throughput in ``count`` ``unit`` per second."""
    seconds = time.monotonic() - start
    print(f" ■ {what}; {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} {unit}/s)", file=stream or sys.stdout,
          flush=True)
