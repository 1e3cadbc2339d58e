"""One definition of a program's options serves both the Python API and the command line.

A program's options are a dataclass whose fields are declared with :func:`option`; the field name is
the RELION flag without its ``--`` (RELION's flags use underscores: ``--no_ctf``, ``--stack2d``).
:func:`build_parser` turns the dataclass into an ``argparse`` parser with argument groups (which
argparse-dataclass cannot make), and :func:`parse_options` returns the dataclass instance.
"""
import argparse
import math
import dataclasses

import numpy as np

from .. import __version__
from .errors import RelionPyError


def option(default, help, group="Options", *, required=False, metavar=None, unsupported=None, flag=None,
           single=False):
    """A dataclass field that is also a command-line flag (``--<field name>``, or ``--<flag>`` for flags
    that are not Python identifiers, e.g. RELION's ``--3d_rot``).

    ``unsupported``: a reason; the flag is accepted by name (RELION scripts pass it) but using it is
    an error that names the flag and the reason, never silently ignored.
    ``single``: RELION reads this number with ``textToFloat`` (single precision); the options class's
    ``__post_init__`` calls :func:`round_single_precision_flags`.
    """
    return dataclasses.field(default=default, metadata=dict(
        help=help, group=group, required=required, metavar=metavar, unsupported=unsupported,
        flag=flag or None, single=single))


def round_single_precision_flags(options):
    """Replace every ``single`` flag's value by the nearest float32, as RELION computes with it.

    QUIRK: RELION parses some flags with ``textToFloat``: ``--angpix 4.4`` is 4.400000095 in its arithmetic,
    and the difference is not small in effect: relion_reconstruct scales every image's matrix by the ratio of
    the optics group's pixel size (a double, 4.4) to --angpix, and at a ratio of 1 − 2·10⁻⁸ RELION's map
    differs from the one without --angpix by 2.5 % of its maximum. ``--maxres 19.2`` with 48-px boxes at
    4.4 Å/px gives r_max = ceil(10.9999996) = 11 in RELION, ceil(11.000000000000002) = 12 in double
    precision."""
    for f in dataclasses.fields(options):
        if f.metadata.get("single"):
            value = getattr(options, f.name)
            with np.errstate(over="ignore"):
                single = float(np.float32(value))
            if (math.isinf(single) and math.isfinite(value)) or (single == 0.0 and value != 0.0):
                raise RelionPyError(f"--{f.name} {value:g} is out of range: RELION reads it in single precision "
                                    f"(magnitudes {float(np.finfo(np.float32).smallest_subnormal):.3g} to "
                                    f"{float(np.finfo(np.float32).max):.3g})")
            setattr(options, f.name, single)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit status 2 (argparse's convention)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(options_class, prog, description, epilog=None):
    """An argparse parser for the options dataclass, grouped by each field's ``group``."""
    parser = _Parser(prog=prog, description=description, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"{prog} (relion_py {__version__}, mirrors RELION 5.0.1)")
    groups = {}
    for f in dataclasses.fields(options_class):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        help_text = meta["help"]
        if meta["unsupported"]:
            help_text += f" [not supported: {meta['unsupported']}]"
        kwargs = dict(dest=f.name, help=help_text, default=f.default)
        if f.type in (bool, "bool"):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            kwargs["metavar"] = meta["metavar"] or {"int": "N", "float": "X"}.get(f.type, "VALUE")
            kwargs["required"] = meta["required"]
            if not meta["required"] and f.default not in (None, ""):
                kwargs["help"] += " (default: %(default)s)"
        group.add_argument("--" + (meta.get("flag") or f.name), **kwargs)
    return parser


def check_supported(options):
    """Raise on any flag that is accepted by name but not implemented, and on any number that is not finite
    (``--bin nan`` would otherwise give all-zero or NaN output, with exit status 0)."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise RelionPyError(f"--{f.metadata.get('flag') or f.name} must be a finite number (got {value})")
        reason = f.metadata.get("unsupported")
        if reason and getattr(options, f.name) != f.default:
            raise RelionPyError(f"option --{f.metadata.get('flag') or f.name} is not supported: {reason}")


def parse_options(options_class, argv, prog, description, epilog=None):
    """Parse ``argv`` (without the program name) into an ``options_class`` instance."""
    ns = build_parser(options_class, prog, description, epilog).parse_args(argv)
    return options_class(**vars(ns))


INPUT_GROUP = "Input and output"


@dataclasses.dataclass
class ProjectInputs:
    """The input and output options every tomography program shares: ``--i`` (optimisation set, or a
    particles STAR file), ``--p``, ``--t``, ``--mot`` (which override the optimisation set's entries), ``--o``."""

    i: str = option("", "Input optimisation set (or a particles STAR file)", INPUT_GROUP, metavar="FILE")
    p: str = option("", "Particles STAR file (overrides the optimisation set's)", INPUT_GROUP,
                    metavar="FILE")
    t: str = option("", "Tomograms STAR file (overrides the optimisation set's)", INPUT_GROUP,
                    metavar="FILE")
    mot: str = option("", "Particle trajectories (motion.star; overrides the optimisation set's)",
                      INPUT_GROUP, metavar="FILE")
    o: str = option(None, "Output directory", INPUT_GROUP, required=True, metavar="DIR")
    # RELION's tomography programs take the display theme of their log (src/jaz/util/log.cpp); the RELION 5 GUI
    # passes "--theme classic" on every command line it writes. relion_py's log has one look.
    theme: str = option("classic", "Display theme of the log (accepted for RELION's GUI; no effect)", INPUT_GROUP,
                        metavar="NAME")
