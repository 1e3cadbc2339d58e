"""How a run ends, as RELION's pipeline sees it: exit files, aborts, SIGTERM.

Mirrors src/pipeline_control.cpp. Under ``--pipeline_control DIR`` (what RELION's GUI and pipeliner pass),
the run ends by creating ``DIR/RELION_JOB_EXIT_SUCCESS``, ``_FAILURE`` or ``_ABORTED`` (stale ones of an
earlier run are removed first), and the GUI's "abort" is a file ``DIR/RELION_JOB_ABORT_NOW`` that the
tomography programs look for before each tomogram. SIGTERM (Slurm's scancel, a job's time limit) is turned
into the same orderly stop as Ctrl-C: workers finish the particle they hold, temporaries are removed,
finished files stay, and ``--only_do_unfinished`` completes the run later.
"""
import os
import signal
from contextlib import contextmanager

EXIT_FILES = ("RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED")
ABORT_NOW = "RELION_JOB_ABORT_NOW"


class Aborted(KeyboardInterrupt):
    """The run was asked to stop (RELION_JOB_ABORT_NOW, SIGTERM); a KeyboardInterrupt, so that everything
    that cleans up after Ctrl-C cleans up after it too."""


def _path(pipeline_control, name):
    return os.path.join(pipeline_control, name)


def start(pipeline_control):
    """``pipeline_control_delete_exit_files``: remove the exit files of an earlier run of the job."""
    if pipeline_control:
        for name in EXIT_FILES:
            if os.path.exists(_path(pipeline_control, name)):
                os.remove(_path(pipeline_control, name))


def finish(pipeline_control, status):
    """``pipeline_control_relion_exit``: create the exit file for ``status`` ('SUCCESS', 'FAILURE' or
    'ABORTED')."""
    if pipeline_control:
        try:
            open(_path(pipeline_control, f"RELION_JOB_EXIT_{status}"), "w").close()
        except OSError as exc:
            print(f" ERROR: cannot touch file: {_path(pipeline_control, 'RELION_JOB_EXIT_' + status)} ({exc.strerror})")


def check_abort(pipeline_control):
    """``pipeline_control_check_abort_job``: raise :class:`Aborted` if the GUI asked the job to stop."""
    if pipeline_control and os.path.exists(_path(pipeline_control, ABORT_NOW)):
        raise Aborted(f"{ABORT_NOW} found in {pipeline_control}")


@contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Aborted` in the main thread (as SIGINT raises
    KeyboardInterrupt) instead of killing the process on the spot."""
    def handler(signum, frame):
        raise Aborted("terminated by SIGTERM")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:          # not the main thread (e.g. called from a notebook's worker): leave it be
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
