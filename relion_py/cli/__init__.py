"""Command-line entry points (console scripts ``relion-py-*``, ``python -m relion_py.cli.*``, RELION-named shims).

When this package starts a program, pyarrow is hidden from pandas: pandas imports pyarrow at its own import
whenever it is installed (starfile requires it, and neither starfile nor relion_py uses it), which costs every
run 59 MiB of resident memory and 45 ms of start-up (measured with pandas 3.1, pyarrow 26; bench case b's peak
RSS went from 640 MiB, above RELION's 592, to 562). pandas then stores string columns in Python objects: the
same values (tests/test_reproducible.py compares a console-script run, without pyarrow, with the same extraction
in-process, with it). Imported from a notebook or a test, the package changes nothing.
"""
import os
import sys

if (os.path.basename(sys.argv[0]).startswith("relion-py-") or sys.argv[0] == "-m") and "pandas" not in sys.modules:
    sys.modules.setdefault("pyarrow", None)      # `import pyarrow` raises ImportError: pandas runs without it
