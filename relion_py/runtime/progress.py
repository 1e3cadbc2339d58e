"""A progress bar on stderr, shown only when stderr is a terminal."""
import sys
import time


class Progress:
    """``with Progress("Extracting TS_01", total) as bar: bar.advance(k)``."""

    def __init__(self, label, total, stream=None):
        self.label, self.total, self.done = label, max(int(total), 0), 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and self.total > 0
        self.start = time.monotonic()
        self._last = 0.0

    def advance(self, n=1):
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            width = 30
            filled = int(width * self.done / self.total)
            self.stream.write(f"\r {self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total} {now - self.start:5.1f}s")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
