"""Shared test helpers: run a RELION fixture case through a relion_py CLI and judge it like the oracle."""
import contextlib
import io
import json
from pathlib import Path

import pytest

import relion_compare

# The portal tests' fixtures (a simulated data set behind a loopback CryoET Data Portal server).
pytest_plugins = ["conftest_portal"]

FIXTURES = Path(__file__).parent / "data" / "fixtures"
CASES = {c["name"]: c for c in json.loads((FIXTURES / "corpus_spec.json").read_text())["cases"]}


working_directory = contextlib.chdir


def set_star_value(path, label, row, value):
    """Rewrite one value of a STAR file in place: column ``label`` of data row ``row`` (0-based) of the loop that
    has that column."""
    lines = Path(path).read_text().split("\n")
    head = next(k for k, line in enumerate(lines) if line.split()[:1] == [f"_{label}"])
    column = 0
    while lines[head - column - 1].lstrip().startswith("_"):
        column += 1
    data = head + 1
    while lines[data].lstrip().startswith("_"):
        data += 1
    words = lines[data + row].split()
    words[column] = value
    lines[data + row] = " ".join(words)
    Path(path).write_text("\n".join(lines))


def mirror_fixtures(dest, case):
    """A project folder like the oracle's scratch copy: every fixture entry except the case's own
    output folder, linked read-only."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in FIXTURES.iterdir():
        if entry.name != case and entry.is_dir():
            (dest / entry.name).symlink_to(entry)
    return dest


def run_case(case, main, tmp_path):
    """Run fixture ``case`` through ``main(argv)`` from a mirrored project folder; returns
    (exit status, candidate output folder)."""
    spec = CASES[case]
    work = mirror_fixtures(tmp_path / "project", case)
    if spec.get("mkdir"):
        (work / case).mkdir()
    args = [a.replace("{case}", case) for a in spec["args"]]
    with working_directory(work):
        status = main(args)
    return status, work / case


def compare_with_relion(reference, candidate, extra=()):
    """compare.py's verdict (default tolerances, as the oracle calls it) and its report."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = relion_compare.main([str(reference), str(candidate), "--allow-extra-columns", *extra])
    return status == 0, out.getvalue()


@pytest.fixture
def relion_case(tmp_path):
    """``relion_case(case, main)`` runs a fixture case and asserts it matches RELION's files."""
    def check(case, main):
        status, candidate = run_case(case, main, tmp_path)
        assert status == 0, f"{case}: exit status {status}"
        ok, report = compare_with_relion(FIXTURES / case, candidate, CASES[case].get("compare_args", []))
        assert ok, report[-3000:]
        return candidate
    return check
