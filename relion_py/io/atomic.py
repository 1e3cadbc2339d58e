"""All-or-nothing output files: no half-written file ever remains under its final name."""
import os
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
