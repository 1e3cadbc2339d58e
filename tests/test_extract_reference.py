"""relion-py-extract --stack2d against an independent plain-numpy reference (tests/reference_extraction.py).

(1) The reference itself against RELION 5.0.1's stack2d fixtures (stacks with compare.py's default
    tolerances; kept particles, rlnTomoVisibleFrames, centred coordinates of RELION's particles.star).
(2) The CLI against the reference on the small projects of tests/data/projects/ (conditions the fixtures
    lack: several interleaved tomograms, odd tomogram sizes, non-square tilt images, rlnTomoHand +1/-1,
    stack order != row order, rlnPhaseShift, per-tomogram optics / Q0 / defocus slope / dose model, origins
    and subtomogram angles, an edge particle, an unknown tomogram, picked-style input), many flag sets.
"""
import json
import os

import pytest

from conftest import FIXTURES, compare_with_relion, working_directory
from reference_extraction import reference_stack2d, write_reference
from relion_py.cli.extract import main
from relion_py.io.star import read_star

PROJECTS = os.path.join(os.path.dirname(__file__), "data", "projects")
STAR_ATOL, STAR_RTOL = 1e-4, 1e-5          # compare.py's default STAR tolerances

BOOL_FLAGS = {
    "--no_ctf": ("ctf", False), "--no_ic": ("invert", False), "--no_circle_crop": ("circle_crop", False),
    "--circle_precrop": ("circle_precrop", True), "--grid_precorr": ("grid_precorr", True),
    "--whiten": ("whiten", True), "--dont_apply_offsets": ("apply_offsets", False),
    "--float16": ("float16", True),
    "--stack2d": (None, None),
}
VALUE_FLAGS = {"--t": "tomograms", "--p": "particles", "--o": "out_dir", "--b": "box", "--crop": "crop",
               "--bin": "binning", "--min_frames": "min_frames", "--max_dose": "max_dose", "--j": None}
CASTS = {"box": int, "crop": int, "binning": float, "min_frames": int, "max_dose": float}


def reference_for(project_dir, argv):
    """Run the reference with the options of a relion_tomo_subtomo --stack2d command line."""
    kw, i = {}, 0
    while i < len(argv):
        if argv[i] in VALUE_FLAGS:
            key = VALUE_FLAGS[argv[i]]
            if key:
                kw[key] = CASTS.get(key, str)(argv[i + 1])
            i += 2
        else:
            key, value = BOOL_FLAGS[argv[i]]
            if key:
                kw[key] = value
            i += 1
    return reference_stack2d(project_dir, kw.pop("tomograms"), kw.pop("particles"), kw.pop("box"),
                             kw.pop("crop", None), kw.pop("binning", 1.0), **kw)


def failures(report):
    """The sections of a compare.py report that failed (the report lists every file)."""
    sections = ["==" + part for part in report.split("==") if "FAIL" in part]
    return "\n".join(sections)[-4000:] or report[-2000:]


def _close(a, b):
    return abs(float(a) - float(b)) <= STAR_ATOL + STAR_RTOL * abs(float(b))


def check_particle_table(ref, table, context):
    """Kept particles (order), visible frames, image names and coordinates of a particles.star table."""
    rows = [] if table is None else [dict(r) for _, r in table.iterrows()]
    got_names = [str(r["rlnTomoParticleName"]) for r in rows]
    want_names = [r["rlnTomoParticleName"] for r in ref.particles]
    assert got_names == want_names, f"{context}: kept particles / order differ"
    for got, want in zip(rows, ref.particles):
        name = want["rlnTomoParticleName"]
        assert str(got["rlnTomoName"]) == str(want["rlnTomoName"]), f"{context} {name}: rlnTomoName"
        visible = list(got["rlnTomoVisibleFrames"])
        assert visible == want["rlnTomoVisibleFrames"], \
            f"{context} {name}: rlnTomoVisibleFrames {visible} != {want['rlnTomoVisibleFrames']}"
        assert got["rlnImageName"] == want["rlnImageName"], f"{context} {name}: rlnImageName"
        assert int(got["rlnOpticsGroup"]) == int(want["rlnOpticsGroup"]), f"{context} {name}: rlnOpticsGroup"
        labels = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"] + [f"rlnOrigin{a}Angst" for a in "XYZ"]
        for label in labels:
            if label in want:
                assert label in got and _close(got[label], want[label]), \
                    f"{context} {name}: {label} {got.get(label)} != {want[label]}"
        assert "rlnCtfImage" not in got and "rlnCoordinateX" not in got, f"{context} {name}: stale columns"


def check_optics_table(ref, table, context):
    rows = [dict(r) for _, r in table.iterrows()]
    assert len(rows) == len(ref.optics), f"{context}: optics rows"
    for got, want in zip(rows, ref.optics):
        for label in ("rlnOpticsGroup", "rlnCtfDataAreCtfPremultiplied", "rlnImageDimensionality",
                      "rlnTomoSubtomogramBinning", "rlnImagePixelSize", "rlnImageSize",
                      "rlnAmplitudeContrast", "rlnTomoTiltSeriesPixelSize"):
            assert _close(got[label], want[label]), f"{context}: optics {label} {got[label]} != {want[label]}"
        if "rlnOpticsGroupName" in want:
            assert str(got["rlnOpticsGroupName"]) == str(want["rlnOpticsGroupName"]), \
                f"{context}: optics name"


# --------------------------------------------------------------------------------------------------
# (1) the reference against RELION's own stack2d output

FIXTURE_CASES = ["a_subtomo_stack2d", "b_subtomo_stack2d_bin2", "c_subtomo_stack2d_noctf_nocircle",
                 "d_subtomo_stack2d_float16", "h2_subtomo_stack2d_dont_apply_offsets",
                 "h3_subtomo_stack2d_minframes_maxdose", "h4_subtomo_stack2d_whiten",
                 "h6_subtomo_stack2d_no_ic", "h7_subtomo_stack2d_aberrations",
                 "h12_subtomo_stack2d_relion4_coords", "h13_subtomo_stack2d_picked"]


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_reference_matches_relion_fixture(case, tmp_path):
    cases = json.loads((FIXTURES / "cases.json").read_text())
    argv = cases[case]["args"]
    ref = reference_for(str(FIXTURES), argv)
    write_reference(ref, tmp_path / case, project_out_dir=f"{case}/")
    ok, report = compare_with_relion(FIXTURES / case, tmp_path / case, ("--exclude", "*.star"))
    assert ok, failures(report)
    relion = read_star(FIXTURES / case / "particles.star")
    check_particle_table(ref, relion.get("particles"), case)
    check_optics_table(ref, relion["optics"], case)


# --------------------------------------------------------------------------------------------------
# (2) relion-py-extract against the reference on the test projects

PROJECT_RUNS = [
    # project, particles file, flags
    ("multi_tomo", "particles.star", "--b 32 --crop 24"),
    ("multi_tomo", "particles.star", "--b 40 --crop 28 --no_ic --float16"),
    ("multi_tomo", "particles.star", "--b 24 --crop 24 --no_ctf --no_circle_crop"),
    ("multi_tomo", "particles.star", "--b 16 --crop 12 --bin 2 --circle_precrop --grid_precorr"),
    ("multi_tomo", "particles.star", "--b 16 --crop 12 --bin 3"),
    ("multi_tomo", "particles.star", "--b 32 --crop 24 --min_frames 8 --max_dose 30"),
    ("multi_tomo", "particles.star", "--b 20 --crop 12 --bin 2.5 --whiten --no_ic"),
    ("multi_tomo", "particles_picked.star", "--b 32 --crop 24 --bin 2 --whiten"),
    ("multi_tomo", "particles_picked.star", "--b 32 --crop 24 --dont_apply_offsets --max_dose 25"),
    ("origins_subtomo", "particles.star", "--b 32 --crop 24"),
    ("origins_subtomo", "particles.star", "--b 32 --crop 24 --dont_apply_offsets"),
    ("origins_subtomo", "particles.star", "--b 24 --crop 24"),
    ("origins_subtomo", "particles.star", "--b 24 --crop 16 --bin 2 --no_ic --grid_precorr"),
    ("origins_subtomo", "particles.star", "--b 16 --crop 8 --bin 3 --no_ctf"),
    ("origins_subtomo", "particles.star", "--b 32 --crop 24 --bin 1.5 --circle_precrop"),
    ("origins_subtomo", "particles.star", "--b 40 --crop 28 --max_dose 20 --min_frames 4 --float16"),
]


def run_cli(project, particles, flags, out):
    argv = ["--t", "input/tomograms.star", "--p", f"input/{particles}", "--o", f"{out}/", "--stack2d",
            *flags.split()]
    with working_directory(os.path.join(PROJECTS, project)):
        status = main(argv)
    return status, argv


@pytest.mark.parametrize("project,particles,flags", PROJECT_RUNS,
                         ids=[f"{p}-{s.split('.')[0]}-{f.replace(' ', '')}" for p, s, f in PROJECT_RUNS])
def test_cli_matches_reference(project, particles, flags, tmp_path):
    out = tmp_path / "cli"
    status, argv = run_cli(project, particles, flags, out)
    assert status == 0
    ref = reference_for(os.path.join(PROJECTS, project), argv)
    assert ref.particles, "the run should keep particles"

    # the same set of stacks, each within compare.py's default tolerances
    written = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                     if f.endswith(".mrcs"))
    expected = sorted(os.path.relpath(r["rlnImageName"], f"{out}/") for r in ref.particles)
    assert written == expected
    write_reference(ref, tmp_path / "ref", project_out_dir=f"{out}/")
    ok, report = compare_with_relion(tmp_path / "ref", out)
    assert ok, failures(report)

    star = read_star(out / "particles.star")
    assert star["general"]["rlnTomoSubTomosAre2DStacks"]
    check_particle_table(ref, star.get("particles"), f"{project} {flags}")
    check_optics_table(ref, star["optics"], f"{project} {flags}")


def test_cli_all_particles_removed(tmp_path):
    """--max_dose 30 leaves 11 frames, fewer than --min_frames 12: nothing is extracted, exit status 0,
    and particles.star has no particle block (RELION's MetaDataTable::write skips empty tables)."""
    out = tmp_path / "cli"
    flags = "--b 32 --crop 24 --min_frames 12 --max_dose 30"
    status, argv = run_cli("multi_tomo", "particles.star", flags, out)
    assert status == 0
    ref = reference_for(os.path.join(PROJECTS, "multi_tomo"), argv)
    assert ref.particles == [] and len(ref.removed) == 16
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".mrcs")]
    star = read_star(out / "particles.star")
    check_particle_table(ref, star.get("particles"), "all removed")
    check_optics_table(ref, star["optics"], "all removed")
