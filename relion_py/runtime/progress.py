"""Progress where cryo-ET users look: a tqdm bar on a terminal, and a plain line every few seconds in a
RELION GUI ``run.out``, a Slurm log or any other file. On stdout, as RELION prints its progress (the GUI
shows stdout as run.out and stderr, for errors, as run.err).

The latest state of every bar is kept, so that an interrupted run can say what it finished
(:func:`so_far`)."""
import sys

from tqdm import tqdm

#: seconds between two progress lines in a log file (a terminal's bar is redrawn 5 times a second)
LOG_INTERVAL = 5.0

_finished = []          # "label: done/total" of the bars of this run, oldest first


class _Lines:
    """A stream for tqdm that turns its carriage-return redraws into one line each (for log files)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.strip("\r\n ")
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


class Progress:
    """``with Progress("Extracting TS_01", total, unit="particle") as bar: bar.advance(k)``."""

    def __init__(self, label, total, unit="particle", stream=None):
        stream = stream or sys.stdout
        tty = stream.isatty()
        self.label, self.total, self.done = label, max(int(total), 0), 0
        self._bar = tqdm(total=self.total, desc=f" {label}", unit=f"{unit}s", file=stream if tty else _Lines(stream),
                         mininterval=0.2 if tty else LOG_INTERVAL, maxinterval=LOG_INTERVAL * 2,
                         dynamic_ncols=tty, ncols=None if tty else 100, ascii=not tty, disable=self.total == 0,
                         leave=True)
        _finished.append(self)

    def advance(self, n=1):
        self.done += n
        self._bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._bar.close()


def reset():
    """Forget the bars of an earlier run (a new command starts)."""
    _finished.clear()


def so_far():
    """What the bars of this run finished: e.g. "TS_01 12/20 particles, TS_02 0/18 particles"."""
    return ", ".join(f"{p.label} {p.done}/{p.total}" for p in _finished if p.total)
