"""Small helpers to read columns of RELION STAR tables with clear errors."""
import numpy as np

from ..runtime.errors import RelionPyError


def require_columns(table, labels, where):
    """Raise one clear error naming the first missing label of ``labels``."""
    for label in labels:
        if label not in table.columns:
            raise RelionPyError(f"{where}: missing required column {label}")


def column(table, label, where, default=None, dtype=np.float64):
    """A numeric column as an array; ``default`` (scalar) if the column is absent, else an error."""
    if label not in table.columns:
        if default is None:
            raise RelionPyError(f"{where}: missing required column {label}")
        return np.full(len(table), default, dtype=dtype)
    try:
        return table[label].to_numpy(dtype=dtype)
    except (TypeError, ValueError):
        raise RelionPyError(f"{where}: column {label} holds non-numeric values") from None


def first_non_finite(values):
    """The index (a tuple) of the first NaN or infinite value of ``values``, or None."""
    bad = np.argwhere(~np.isfinite(values))
    return tuple(int(i) for i in bad[0]) if len(bad) else None


def first_not_positive(values):
    """The first of ``values`` that is not a positive finite number (a pixel size, say), or None."""
    values = np.asarray(values, np.float64)
    bad = values[~((values > 0) & np.isfinite(values))]
    return bad[0] if len(bad) else None
