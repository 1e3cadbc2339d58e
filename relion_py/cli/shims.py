"""relion-py-shims: write executables named as RELION's particle programs that run relion_py.

With the folder first on PATH, RELION 5's GUI (which runs ```which relion_tomo_subtomo` …``), its
pipeliner and any job script run relion_py with their command lines unchanged.
"""
import argparse
import os
import shlex
import sys

from ..io.atomic import atomic_output
from .common import run_cli
from .shim import MARKER, PROGRAMS, is_shim
from ..runtime.errors import RelionPyError

PROG = "relion-py-shims"

SCRIPT = """#!/bin/sh
# {marker}: {name} runs relion_py ({command}); written by relion-py-shims.
# A flag relion_py does not support hands the command to the real {name} further down PATH.
exec {python} -m relion_py.cli.shim {name} "$@"
"""


def write_shims(folder, force=False):
    """Write one executable per RELION program name into ``folder``; returns their paths.

    An existing file of that name is replaced only if it is a shim already (or ``force``), so that a
    real RELION installation is never overwritten."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, (command, _, _) in PROGRAMS.items():
        path = os.path.join(folder, name)
        if os.path.exists(path) and not is_shim(path) and not force:
            raise RelionPyError(f"{path} exists and is not a relion_py shim (a real RELION program?); "
                                "choose another folder, or --force to replace it")
        text = SCRIPT.format(marker=MARKER, name=name, command=command, python=shlex.quote(sys.executable))
        with atomic_output(path) as tmp:
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o755)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0] + " Put DIR first on PATH: "
                                     "export PATH=DIR:$PATH")
    parser.add_argument("dir", metavar="DIR", help="folder to write the executables into (created if needed)")
    parser.add_argument("--force", action="store_true", help="replace files of those names that are not shims")
    args = parser.parse_args(argv)

    def write():
        for path in write_shims(args.dir, args.force):
            print(path)
        print(f"# now: export PATH={shlex.quote(os.path.abspath(args.dir))}:$PATH")
    return run_cli(PROG, write)


if __name__ == "__main__":
    sys.exit(main())
