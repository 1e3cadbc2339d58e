"""RELION 5.0.1's own outputs on the small test projects (tests/data/projects), made with RELION built from
source in a development session (tests/data/relion_built_here/README.md): several tomograms with interleaved
particles, non-square images, odd tomogram sizes, hand +1, picking-style input, origins with subtomogram
angles, defocus slopes, the B-factor dose model, a particle of an unknown tomogram, and non-integer binning.
Each case runs as the oracle runs the fixtures: from a project folder holding the inputs and the other cases'
RELION outputs, judged with compare.py's default tolerances."""
import json
from pathlib import Path

import pytest

from conftest import compare_with_relion, working_directory
from relion_py.cli import extract, reconstruct

DATA = Path(__file__).parent / "data"
BUILT_HERE = DATA / "relion_built_here"
PROJECTS = ("multi_tomo", "origins_subtomo")
MAINS = {"relion_tomo_subtomo": extract.main, "relion_tomo_reconstruct_particle": reconstruct.main,
         "relion_reconstruct": reconstruct.main}


def _cases():
    return [pytest.param(project, case, id=f"{project}-{case['name']}") for project in PROJECTS
            for case in json.loads((BUILT_HERE / project / "cases.json").read_text())["cases"]]


@pytest.mark.slow
@pytest.mark.parametrize("project, case", _cases())
def test_matches_relion(project, case, tmp_path):
    golden = BUILT_HERE / project
    work = tmp_path / "project"
    work.mkdir()
    (work / "input").symlink_to(DATA / "projects" / project / "input")
    for other in golden.iterdir():
        if other.is_dir() and other.name != case["name"]:
            (work / other.name).symlink_to(other)
    if case.get("mkdir"):
        (work / case["name"]).mkdir()
    args = [a.replace("{case}", case["name"]) for a in case["args"]]
    with working_directory(work):
        assert MAINS[case["program"]](args) == 0
    ok, report = compare_with_relion(golden / case["name"], work / case["name"])
    assert ok, report[-3000:]
