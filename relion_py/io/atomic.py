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


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete the ``.<name>.tmp-<pid>`` files in ``folder`` left by runs that were killed (their process no
    longer exists, or is this one). Returns the number removed."""
    removed = 0
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for name in names:
        match = _TEMPORARY.match(name)
        if match and (int(match["pid"]) == os.getpid() or not _alive(int(match["pid"]))):
            try:
                os.remove(os.path.join(folder, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed
