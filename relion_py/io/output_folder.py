"""An output folder that never loses or overwrites anything: it refuses outputs that are inputs, and a
failed run leaves it as it found it, except for finished files that ``--only_do_unfinished`` trusts."""
import os

from ..runtime.errors import RelionPyError


def refuse_inputs_as_outputs(outputs, inputs):
    """Raise if any of ``outputs`` is one of ``inputs`` (the same file after resolving links)."""
    resolved = {os.path.realpath(p): p for p in inputs if p}
    for path in outputs:
        same = resolved.get(os.path.realpath(path))
        if same is not None:
            raise RelionPyError(f"output {path} would overwrite the input {same}: choose another --o")


class OutputFolder:
    """``with OutputFolder(path) as out:`` creates ``path`` (and parents) as needed; :meth:`makedirs` creates
    more folders and :meth:`note` registers files that only make sense for a finished run (note.txt). If the
    block fails, those files are removed, and so are the folders it created that are left empty."""

    def __init__(self, path):
        self.path = path
        self._created, self._notes = [], []

    def makedirs(self, path):
        missing = []
        head = os.path.normpath(path)
        while head and not os.path.isdir(head):
            if os.path.lexists(head):
                raise RelionPyError(f"{head} exists and is not a folder: choose another --o")
            missing.append(head)
            head = os.path.dirname(head)
        for folder in reversed(missing):
            os.mkdir(folder)
            self._created.append(folder)

    def note(self, path):
        self._notes.append(path)

    def __enter__(self):
        self.makedirs(self.path)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return
        for path in self._notes:
            if os.path.exists(path):
                os.remove(path)
        for folder in reversed(self._created):
            try:
                os.rmdir(folder)          # only if empty: finished particle files stay
            except OSError:
                pass
