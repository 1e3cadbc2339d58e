"""All-or-nothing output files: no half-written file ever remains under its final name."""
import os
import re
from contextlib import contextmanager


@contextmanager
def atomic_output(path):
    """Yield a temporary path ``.<name>.tmp-<pid>`` next to ``path``; rename it onto ``path`` on
    success, delete it if the block raises.

    Like ``MetaDataTable::write`` (src/metadata_table.cpp), which writes ``<file>.tmp`` and renames it
    "to prevent errors with programs in pipeliner reading in incomplete STAR files" — but used for every
    output, MRC files included.
    """
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete the temporaries (``.<name>.tmp-<pid>``) that killed runs left under ``folder``: those whose
    process no longer runs. Returns how many were removed."""
    removed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            match = _TEMPORARY.match(name)
            if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed
