"""RELION's image addressing: ``N@file`` names the N-th image (1-based) of an MRC stack, a plain path a
whole file (``rlnImageName``, ``rlnMicrographName``)."""
from ..runtime.errors import RelionPyError


def split_image_name(name):
    """``'N@path'`` → (path, N-1); a plain path → (path, 0). Mirrors RELION's ``N@file`` addressing."""
    name = str(name).strip()
    if "@" in name:
        index, path = name.split("@", 1)
        try:
            n = int(index)
        except ValueError:
            raise RelionPyError(f"bad image name '{name}': expected N@file with an integer N") from None
        if n < 1:
            raise RelionPyError(f"bad image name '{name}': image numbers start at 1")
        return path, n - 1
    return name, 0
