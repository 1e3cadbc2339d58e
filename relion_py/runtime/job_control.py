"""How a run ends: SIGTERM handled like Ctrl-C, and RELION's pipeline-control exit files.

SLURM's ``scancel`` and time limits send SIGTERM; Python's default would end the process at once, leaving
``.NAME.tmp-PID`` files behind. Here SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main
thread, so the same ``finally`` blocks run as for Ctrl-C: workers stop, temporaries are removed, and files
already renamed to their final names are complete.

Mirrors ``pipeline_control_relion_exit`` (src/pipeline_control.cpp): with ``--pipeline_control DIR`` the
program touches ``DIR`` + ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE`` / ``_ABORTED`` on leaving.
"""
import os
import signal
import threading
from contextlib import contextmanager

EXIT_FILES = {0: "RELION_JOB_EXIT_SUCCESS", 1: "RELION_JOB_EXIT_FAILURE", 2: "RELION_JOB_EXIT_ABORTED"}


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


class AbortRequested(KeyboardInterrupt):
    """RELION's GUI asked the job to stop: its "abort" button creates ``RELION_JOB_ABORT_NOW`` in the job
    folder, which RELION's tomography programs look for before each tomogram (``pipeline_control_check_abort_job``)."""


def check_abort(pipeline_control):
    """Raise :class:`AbortRequested` if ``pipeline_control`` + ``RELION_JOB_ABORT_NOW`` exists (RELION joins
    them as text, as for the exit files)."""
    if pipeline_control and os.path.exists(pipeline_control + "RELION_JOB_ABORT_NOW"):
        raise AbortRequested()


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (no effect elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_exit_file(pipeline_control, mode):
    """Touch the exit file of ``mode`` (0 success, 1 failure, 2 aborted) under ``pipeline_control``.

    QUIRK: RELION appends the file name to the flag's value as a string (the GUI passes ``Job/job005/``), so
    without a trailing '/' the file lands next to the folder; mirrored. Returns an error text or None."""
    if not pipeline_control:
        return None
    path = pipeline_control + EXIT_FILES[mode]
    try:
        open(path, "w").close()
    except OSError as e:
        return f"cannot touch file: {path} ({e.strerror})"
    return None


class _Finished:
    """How many particles the current run has finished (written under their final names, or accumulated);
    ``what`` stays None in programs that keep nothing of a stopped run (relion_reconstruct)."""
    count = 0
    what = None


def count_finished(n=1, what="particles"):
    """Record ``n`` more finished work items (for the line printed when a run is stopped)."""
    _Finished.count += n
    _Finished.what = what


def finished_summary():
    """The line saying what a stopped run finished."""
    if _Finished.what is None:
        return "no work was kept: run it again"
    return (f"{_Finished.count} {_Finished.what} were finished (files under their final names are complete; "
            "rerun with --only_do_unfinished to do the rest)")
