"""What every command-line entry point shares: one clear error line, an exit status, and RELION's job
control (SIGTERM, --pipeline_control exit files)."""
import os
import sys
import traceback

from ..runtime.errors import RelionPyError
from ..runtime.job_control import (AbortRequested, Terminated, finished_summary, sigterm_as_interrupt,
                                   write_exit_file)


def run_cli(prog, func, pipeline_control=""):
    """Run ``func()``; turn errors into one line on stderr and an exit status.

    RelionPyError (bad input) → status 1. Ctrl-C → 130, SIGTERM → 143 (128 + signal), RELION's
    RELION_JOB_ABORT_NOW → 2 (RELION_EXIT_ABORTED), each with a line saying
    what was finished. Any other exception is a relion_py bug: one line too, with the traceback only when
    RELION_PY_DEBUG is set. With ``pipeline_control``, RELION's exit file of the outcome is written.
    """
    status, mode = _run(prog, func)
    problem = write_exit_file(pipeline_control, mode)
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        status = status or 1
    return status


def _run(prog, func):
    """(exit status, pipeline-control mode) of ``func()``."""
    try:
        with sigterm_as_interrupt():
            func()
        return 0, 0
    except RelionPyError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1, 1
    except AbortRequested:
        print(f"{prog}: stopped by RELION_JOB_ABORT_NOW; {finished_summary()}", file=sys.stderr)
        return 2, 2                 # RELION_EXIT_ABORTED
    except KeyboardInterrupt as e:
        signal_name = "SIGTERM" if isinstance(e, Terminated) else "interrupt"
        print(f"{prog}: stopped by {signal_name}; {finished_summary()}", file=sys.stderr)
        return (143 if isinstance(e, Terminated) else 130), 2
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return 1, 1
    except Exception as e:  # noqa: BLE001 - the last line of defence of a CLI
        if os.environ.get("RELION_PY_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: internal error: {type(e).__name__}: {e} (set RELION_PY_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3, 1
