"""What every command-line entry point shares: one clear error line and an exit status."""
import os
import sys
import traceback

from ..runtime.errors import RelionPyError


def run_cli(prog, func):
    """Run ``func()``; turn errors into one line on stderr and an exit status.

    RelionPyError (bad input) → status 1. Any other exception is a relion_py bug: one line too,
    with the traceback only when RELION_PY_DEBUG is set.
    """
    try:
        func()
        return 0
    except RelionPyError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the last line of defence of a CLI
        if os.environ.get("RELION_PY_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: internal error: {type(e).__name__}: {e} (set RELION_PY_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3
