"""What every command-line entry point shares: one clear error line, an exit status, and RELION's
pipeline-control exit files."""
import os
import sys
import traceback

from ..runtime import job_control, progress
from ..runtime.errors import RelionPyError


def run_cli(prog, func, pipeline_control=""):
    """Run ``func()``; turn errors into one line on stderr and an exit status, and end RELION's way.

    RelionPyError (bad input) and OSError (the file system refused: permissions, a full disk, a file where
    a folder should be) → status 1 and RELION_JOB_EXIT_FAILURE. Ctrl-C, SIGTERM or the GUI's
    RELION_JOB_ABORT_NOW → a line saying what was finished, RELION_JOB_EXIT_ABORTED, status 130 / 143 / 2.
    Any other exception is a relion_py bug: one line too (status 3), with the traceback only when
    RELION_PY_DEBUG is set.
    """
    progress.reset()
    try:
        job_control.start(pipeline_control)
        with job_control.sigterm_as_interrupt():
            func()
        job_control.finish(pipeline_control, "SUCCESS")
        return 0
    except (RelionPyError, OSError, MemoryError) as e:
        job_control.finish(pipeline_control, "FAILURE")
        print(f"{prog}: error: {_describe(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        job_control.finish(pipeline_control, "ABORTED")
        done = progress.so_far()
        reason = str(e) or "interrupted"
        print(f"{prog}: {reason}; finished: {done or 'nothing yet'}"
              + ("; rerun with --only_do_unfinished to complete it" if done else ""), file=sys.stderr)
        if isinstance(e, job_control.Aborted):
            return 143 if "SIGTERM" in reason else 2
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence of a CLI
        job_control.finish(pipeline_control, "FAILURE")
        if os.environ.get("RELION_PY_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: internal error: {type(e).__name__}: {e} (set RELION_PY_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3


def _describe(error):
    """One line for an error the user can act on."""
    if isinstance(error, MemoryError):
        return "out of memory"
    if isinstance(error, OSError) and error.strerror:
        names = " -> ".join(str(n) for n in (error.filename, error.filename2) if n)
        return f"{names}: {error.strerror}" if names else error.strerror
    return str(error)
