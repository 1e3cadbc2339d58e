"""Output folders: refused when they are files, unwritable, or would overwrite an input; tidied after a
failed run so that only files a later ``--only_do_unfinished`` run can trust remain."""
import os
from contextlib import contextmanager

from ..runtime.errors import RelionPyError


def check_writable_folder(folder, flag="--o"):
    """Create ``folder`` (and its parents) unless it exists; one clear error if it is a file or unwritable."""
    folder = folder or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RelionPyError(f"{flag} {folder}: is an existing file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise RelionPyError(f"{flag} {folder}: a part of this path is an existing file, not a folder") from None
    except NotADirectoryError:
        raise RelionPyError(f"{flag} {folder}: a part of this path is an existing file, not a folder") from None
    except OSError as e:
        raise RelionPyError(f"{flag} {folder}: cannot create the folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RelionPyError(f"{flag} {folder}: the folder is not writable")


def refuse_overwriting_inputs(outputs, inputs):
    """Raise if an output path is one of the input files (compared after resolving symlinks)."""
    resolved = {os.path.realpath(p): p for p in inputs if p}
    for out in outputs:
        hit = resolved.get(os.path.realpath(out))
        if hit is not None:
            raise RelionPyError(f"the output {out} would overwrite the input {hit}: choose another --o")


def _entries(folder):
    """Every path below ``folder`` (folders included), or an empty set if it does not exist."""
    found = set()
    for root, dirs, files in os.walk(folder):
        found.update(os.path.join(root, name) for name in dirs + files)
    return found


@contextmanager
def tidy_on_failure(folder, untrusted=("note.txt",)):
    """If the block raises (other than an interruption, whose finished files a resume can trust), remove what
    it created that no resume can trust: the ``untrusted`` files and the folders left empty (``folder`` too,
    if the block created it)."""
    existed = os.path.isdir(folder)
    before = _entries(folder)
    try:
        yield
    except Exception:
        for name in untrusted:
            path = os.path.join(folder, name)
            if path not in before and os.path.isfile(path):
                os.remove(path)
        created = sorted(_entries(folder) - before, key=len, reverse=True) + ([] if existed else [folder])
        for path in created:
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        raise
