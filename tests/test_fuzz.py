"""Fuzzing (issue 14): random truncations, random bytes and random numbers in the STAR reader, the MRC reader and
the extraction command line. Every outcome is a correct result or one clear error (RelionPyError, exit 1):
never an internal error (exit 3), a traceback, or a temporary file left behind."""
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import FIXTURES, working_directory
from relion_py.cli import extract, reconstruct
from relion_py.io.mrc import read_mrc, write_mrc
from relion_py.io.star import read_star
from relion_py.runtime.errors import RelionPyError

STAR = (FIXTURES / "synthetic" / "particles.star").read_bytes()
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutated(data, cut, edits):
    """``data`` truncated at ``cut`` (a fraction) with bytes replaced at (fraction, byte) ``edits``."""
    out = bytearray(data[:int(len(data) * cut)])
    for where, byte in edits:
        if out:
            out[min(int(len(out) * where), len(out) - 1)] = byte
    return bytes(out)


MUTATIONS = dict(cut=st.floats(0.0, 1.0), edits=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)),
                                                        max_size=6))


@FAST
@given(**MUTATIONS)
def test_star_reader(tmp_path, cut, edits):
    path = tmp_path / "p.star"
    path.write_bytes(_mutated(STAR, cut, edits))
    try:
        read_star(path)
    except RelionPyError as e:
        assert "\n" not in str(e)


@pytest.fixture(scope="module")
def mrc_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("mrc") / "m.mrcs"
    write_mrc(path, np.arange(3 * 8 * 6, dtype=np.float32).reshape(3, 8, 6), 2.5, stack=True)
    return path.read_bytes()


@FAST
@given(**MUTATIONS)
def test_mrc_reader(tmp_path, mrc_bytes, cut, edits):
    path = tmp_path / "m.mrcs"
    data = _mutated(mrc_bytes, cut, edits)
    path.write_bytes(data)
    try:
        values, pixel_size = read_mrc(path)
    except RelionPyError as e:
        assert "\n" not in str(e)
        return
    if data == mrc_bytes:
        assert np.array_equal(values.ravel(), np.arange(3 * 8 * 6, dtype=np.float32)) and pixel_size == 2.5


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("fuzz") / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


def _extract(project, capsys, argv):
    """Run relion-py-extract in ``project`` into a fresh out/; its status and error lines."""
    shutil.rmtree(project / "out", ignore_errors=True)
    with working_directory(project):
        try:
            status = extract.main(argv + ["--o", "out/"])
        except SystemExit as e:          # argparse: unparsable flag values (exit 2, one line)
            status = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status in (0, 1, 2), err
    assert len(err) == (status != 0), err
    assert not [p for p in Path(project / "out").rglob("*") if ".tmp-" in p.name]
    if status == 0:                          # a correct result is a finite one (RELION would write NaN silently)
        for path in Path(project / "out").rglob("*.mrc*"):
            assert np.isfinite(read_mrc(path)[0]).all(), path
    return status


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.sampled_from(["1e400", "-0", "0x10", "", "nan", "abc"]))
FLAGS = ["--b", "--crop", "--bin", "--min_frames", "--max_dose", "--cutoff_fract", "--j", "--SNR", "--taper",
         "--cone_angle"]


@SLOW
@given(flag=st.sampled_from(FLAGS), value=NUMBERS, stack2d=st.booleans())
def test_extract_numeric_flags(project, capsys, flag, value, stack2d):
    argv = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--b", "32", "--crop", "24",
            "--j", "1"] + (["--stack2d"] if stack2d else [])
    status = _extract(project, capsys, argv + [f"{flag}={value}"])
    if isinstance(value, float) and not math.isfinite(value):
        assert status != 0


@SLOW
@given(**MUTATIONS)
def test_extract_with_a_damaged_particles_file(project, capsys, cut, edits):
    (project / "damaged.star").write_bytes(_mutated(STAR, cut, edits))
    _extract(project, capsys, ["--t", "synthetic/tomograms.star", "--p", "damaged.star", "--b", "32",
                               "--crop", "24", "--j", "1", "--stack2d"])


def _with_value(text, line_fraction, field_fraction, value):
    """particles.star with one field of one data row (any block) replaced by ``value``."""
    lines = text.split("\n")
    rows = [k for k, line in enumerate(lines) if line.strip() and not line.lstrip().startswith(("_", "#", "data_",
                                                                                                 "loop_"))]
    k = rows[min(int(len(rows) * line_fraction), len(rows) - 1)]
    words = lines[k].split()
    words[min(int(len(words) * field_fraction), len(words) - 1)] = str(value)
    lines[k] = " ".join(words)
    return "\n".join(lines)


@SLOW
@given(line=st.floats(0.0, 1.0), field=st.floats(0.0, 1.0), value=NUMBERS)
def test_extract_with_random_numbers_in_the_particles_file(project, capsys, line, field, value):
    (project / "edited.star").write_text(_with_value(STAR.decode(), line, field, value))
    _extract(project, capsys, ["--t", "synthetic/tomograms.star", "--p", "edited.star", "--b", "32",
                               "--crop", "24", "--j", "1", "--stack2d"])


TILT_SERIES = (FIXTURES / "synthetic" / "tilt_series" / "TS_01.star").read_text()
TOMOGRAMS = (FIXTURES / "synthetic" / "tomograms.star").read_text()


#: numbers only (unparsable text is the STAR reader's tests' business), absurd ones included
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                   st.sampled_from(["1e400", "-1e300", "1e30", "-0"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.floats(0.0, 1.0), field=st.floats(0.0, 1.0), value=VALUES, stack2d=st.booleans(),
       in_tilt_series=st.booleans())
def test_extract_with_random_numbers_in_the_tilt_series_files(project, capsys, line, field, value, stack2d,
                                                             in_tilt_series):
    """CTF, dose, hand and projection numbers of tomograms.star or a tilt-series file: a finite result or one
    error line (NaN or infinite numbers, or absurd ones whose CTF x dose weights overflow)."""
    (project / "edited_ts.star").write_text(_with_value(TILT_SERIES, line, field, value) if in_tilt_series
                                            else TILT_SERIES)
    tomograms = TOMOGRAMS.replace("synthetic/tilt_series/TS_01.star", "edited_ts.star")
    (project / "edited_tomograms.star").write_text(tomograms if in_tilt_series
                                                   else _with_value(tomograms, line, field, value))
    _extract(project, capsys, ["--t", "edited_tomograms.star", "--p", "synthetic/particles.star", "--b", "32",
                               "--crop", "24", "--j", "1"] + (["--stack2d"] if stack2d else []))


SPA_STAR = (FIXTURES / "synthetic" / "spa2d" / "particles.star").read_text()


@pytest.fixture(scope="module")
def spa_project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("fuzz_spa") / "synthetic" / "spa2d"
    shutil.copytree(FIXTURES / "synthetic" / "spa2d", dest)
    return dest.parent.parent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.floats(0.0, 1.0), field=st.floats(0.0, 1.0), value=VALUES)
def test_reconstruct_with_random_numbers_in_the_particles_file(spa_project, capsys, line, field, value):
    """relion_reconstruct --ctf: a finite map or one error line (never a traceback, never a NaN map)."""
    (spa_project / "edited.star").write_text(_with_value(SPA_STAR, line, field, value))
    out = spa_project / "rec.mrc"
    out.unlink(missing_ok=True)
    with working_directory(spa_project):
        status = reconstruct.main(["--i", "edited.star", "--o", "rec.mrc", "--ctf", "--verb", "0"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert status in (0, 1) and len(err) == (status != 0), err
    assert out.exists() == (status == 0)
    if status == 0:
        assert np.isfinite(read_mrc(out)[0]).all()
