"""RELION STAR files: reading through ``starfile`` with RELION's value types, writing RELION's exact text.

Values are typed as RELION types them (``star_labels``): doubles → float64, ints → int64, bools → bool,
strings → str, vectors → Python lists (of float or int); labels unknown to RELION keep their text.
"""
import math
import re

import numpy as np
import pandas as pd
import starfile

from ..runtime.errors import RelionPyError
from .atomic import atomic_output
from .star_labels import label_type

_LABEL_LINE = re.compile(rb"\n[ \t]*_(\S+)")
_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


class StarFile(dict):
    """The data blocks of a read STAR file, in file order: ``{name: DataFrame}`` for loop tables,
    ``{name: {label: value}}`` for list tables (``data_general`` → key ``'general'``); ``path`` names the
    file in errors. ``loop(name)`` / ``list(name)`` return one table or raise one clear ``RelionPyError``."""

    def __init__(self, path, blocks=()):
        super().__init__(blocks)
        self.path = str(path)

    def is_loop(self, name):
        return isinstance(self.get(name), pd.DataFrame)

    def is_list(self, name):
        return isinstance(self.get(name), dict)

    def loop(self, name):
        """The loop table ``data_<name>``."""
        if not self.is_loop(name):
            raise RelionPyError(f"{self.path}: no table data_{name}")
        return self[name]

    def list(self, name):
        """The list table ``data_<name>`` as {label: value}."""
        if not self.is_list(name):
            raise RelionPyError(f"{self.path}: no list data_{name} (label-value pairs)")
        return self[name]

    def loops(self):
        """(name, DataFrame) of every loop table, in file order."""
        return [(name, block) for name, block in self.items() if isinstance(block, pd.DataFrame)]


def read_star(path):
    """Read every data block of a STAR file as a :class:`StarFile`. Any problem → ``RelionPyError``.

    Mirrors the parsing of ``MetaDataTable::readStar`` (src/metadata_table.cpp): every value of a label
    RELION knows is converted to the label's type (``setValueFromString``), others stay text.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise RelionPyError(f"cannot read STAR file {path}: {exc.strerror}") from None
    if not raw.strip():
        raise RelionPyError(f"STAR file {path} is empty")
    # Every column is read as text and typed here: starfile's own guess would turn e.g. rlnTomoName '1'
    # into an int and rewrite unknown labels' values.
    labels = sorted({m.decode("utf-8", "replace") for m in _LABEL_LINE.findall(b"\n" + raw)})
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=labels)
    except Exception as exc:  # starfile/pandas raise many types on malformed text
        raise RelionPyError(f"STAR file {path} is malformed: {_reason(exc)}") from None
    if not blocks:
        raise RelionPyError(f"{path} is not a STAR file (no data_ block)")
    out = StarFile(path)
    for name, block in blocks.items():
        where = f"STAR file {path}, data_{name}"
        if isinstance(block, pd.DataFrame):
            out[name] = pd.DataFrame({label: _typed_column(label, block[label], where)
                                      for label in block.columns})
        else:
            out[name] = {label: _typed_value(label, text, where) for label, text in block.items()}
    return out


def _reason(exc):
    """One line saying what starfile/pandas choked on."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, pd.errors.ParserError) or text.startswith("Length mismatch"):
        return "a table row does not have one value per label"
    if "unpack" in text:
        return "a data_ block has no table, or a list entry does not have exactly one value"
    return text


def _leading_int(text):
    """C++ ``istream >> long``: the leading integer of the text ('1.0' → 1)."""
    match = _LEADING_INT.match(str(text))
    if match is None:
        raise ValueError(text)
    return int(match.group(1))


def _converter(kind):
    """Text → value of RELION type ``kind``, as ``MetaDataTable::setValueFromString`` converts it."""
    if kind in ("vector_double", "vector_int"):
        return lambda text: parse_vector(kind, text)
    # ``bool v; istream >> v`` stores true for any non-zero integer.
    return {"double": float, "int": _leading_int, "bool": lambda text: _leading_int(text) != 0}[kind]


def _typed_value(label, text, where):
    kind = label_type(label)
    if kind in (None, "string"):
        return text
    try:
        return _converter(kind)(text)
    except (ValueError, TypeError):
        raise RelionPyError(f"{where}: '{text}' is not a valid {kind} value for _{label}") from None


def _typed_column(label, texts, where):
    """Convert one loop-table column of value texts to RELION's type for ``label``."""
    kind = label_type(label)
    # starfile reads 'nan' tokens as NaN, and the missing trailing fields of a short row as ''.
    if kind in (None, "string"):
        return texts.map(lambda t: "nan" if isinstance(t, float) else t)
    missing = np.flatnonzero((texts == "").to_numpy(dtype=bool))
    if len(missing):
        raise RelionPyError(f"{where}: row {missing[0] + 1} has no value for _{label} (truncated file?)")
    try:
        if kind == "double":
            return texts.astype(np.float64)
        if kind == "int":
            try:
                return texts.astype(np.int64)
            except (ValueError, TypeError):
                pass  # e.g. '1.0': C++'s leading-integer rule below
        values = texts.map(_converter(kind))
        return values if kind.startswith("vector") else values.astype(np.int64 if kind == "int" else bool)
    except (ValueError, TypeError):
        for text in texts:
            _typed_value(label, text, where)  # raises the error naming the first bad value
        raise


def parse_vector(kind, text):
    """``'[v1,v2,...]'`` → list of float (``kind='vector_double'``) or int (``'vector_int'``).

    Mirrors ``MetaDataTable::setValueFromString`` (strtok on "[,]"); unlike RELION the brackets are
    required, which catches vectors cut off in truncated files.
    """
    text = str(text).strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(text)
    convert = float if kind == "vector_double" else int
    body = text[1:-1]
    try:
        return [convert(tok) for tok in body.split(",")] if body else []
    except ValueError:  # RELION's strtok skips empty tokens; C++ reads '1.5' into an int as 1
        convert = float if kind == "vector_double" else _leading_int
        return [convert(tok) for tok in body.split(",") if tok.strip()]


def escape_string(value):
    """Mirrors ``escapeStringForSTAR`` (src/strings.cpp): ``""`` for an empty string; values starting with
    a quote or containing blanks are double-quoted."""
    if value == "":
        return '""'
    if value[0] in "\"'" or " " in value or "\t" in value:
        out = []
        for pos, char in enumerate(value):
            # RELION puts a BEL character (dropped by its reader) before a '"' that is followed by a blank,
            # or (its test is off by one) by exactly one more character.
            if char == '"' and (pos + 1 == len(value) - 1 or value[pos + 1:pos + 2] in (" ", "\t")):
                out.append("\a")
            out.append(char)
        return '"' + "".join(out) + '"'
    return value


def _format_double(v):
    v = float(v)
    if v != v:  # glibc prints the sign of a NaN
        s = "-nan" if math.copysign(1.0, v) < 0 else "nan"
        return s.rjust(12)
    a = abs(v)
    if 0.0 < a < 0.001 or a > 100000.0:
        s = ("%12.5e" if v < 0 else "%12.6e") % v
    else:
        s = ("%12.5f" if v < 0 else "%12.6f") % v
    # snprintf(buffer, 13, ...): at most 12 characters (cuts 3-digit exponents and 100000.000000).
    return s[:12]


def _format_string(v):
    return escape_string(str(v))


def _format_int(v):
    return ("%12d" % (_leading_int(v) if isinstance(v, str) else int(v)))[:12]


def _format_bool(v):
    return "%12d" % ((_leading_int(v) != 0) if isinstance(v, str) else bool(v))


def _vector_formatter(kind):
    # C++ ostream with setprecision(12) (== %.12g) for doubles; no blanks.
    element = "%.12g".__mod__ if kind == "vector_double" else (lambda x: str(int(x)))

    def fmt(v):
        if isinstance(v, str):
            v = parse_vector(kind, v)
        elif not isinstance(v, (list, tuple)):
            v = np.asarray(v).ravel().tolist()
        return "[" + ",".join(map(element, v)) + "]"
    return fmt


def _formatter(label):
    kind = label_type(label)
    if kind is None:
        return str
    if kind == "string":
        return _format_string
    if kind.startswith("vector"):
        return _vector_formatter(kind)
    return {"double": _format_double, "int": _format_int, "bool": _format_bool}[kind]


def format_value(label, value):
    """One value as RELION writes it (before the table's column alignment). Mirrors
    ``MetaDataTable::getValueToString(..., escape=true)``; values of labels unknown to RELION: ``str``."""
    return _formatter(label)(value)


def write_star(path, blocks):
    """Write ``{name: DataFrame (loop table) | dict (list table)}`` in RELION's exact text, atomically.

    Mirrors ``MetaDataTable::write`` (src/metadata_table.cpp), including that loop tables without rows
    are not written at all.
    """
    parts = []
    for name, block in blocks.items():
        is_loop = isinstance(block, pd.DataFrame)
        if is_loop and len(block) == 0:
            continue
        parts.append(f"\n# version 50001\n\ndata_{name}\n\n")
        parts.append(_loop_text(block) if is_loop else _list_text(block))
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write("".join(parts))


def _loop_text(df):
    header = "loop_ \n" + "".join(f"_{label} #{i} \n" for i, label in enumerate(df.columns, 1))
    columns = []
    for label in df.columns:
        # Values of unknown labels are escaped in loops (not in lists).
        fmt = _format_string if label_type(label) is None else _formatter(label)
        columns.append([fmt(v).rjust(10) + " " for v in df[label].tolist()])
    rows = "".join("".join(cells) + "\n" for cells in zip(*columns))
    return header + rows + " \n"


def _list_text(table):
    width = max([10] + [len(label) for label in table])
    lines = "".join(f"_{label}{' ' * (12 + width - len(label))}{format_value(label, value)}\n"
                    for label, value in table.items())
    return lines + " \n"
