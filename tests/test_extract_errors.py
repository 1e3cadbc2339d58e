"""Bad input: one clear error line, a non-zero exit, no half-written output, inputs untouched."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, working_directory
from relion_py.cli.extract import main
from relion_py.io.mrc import write_mrc

BASE = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--stack2d", "--b", "32",
        "--crop", "24", "--j", "1"]


@pytest.fixture
def project(tmp_path):
    """A writable copy of the fixture project's inputs."""
    dest = tmp_path / "project" / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


def run(project, argv, capsys):
    with working_directory(project):
        status = main(argv + ["--o", "out/"])
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


def no_temporary_files(root):
    return not [p for p in Path(root).rglob("*") if ".tmp-" in p.name]


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("args,message", [
    (["--b", "33"], "--b must be a positive even number"),
    (["--crop", "25"], "--crop must be a positive even number"),
    (["--crop", "40"], "--crop (40) must not exceed --b (32)"),
    (["--bin", "1.5", "--b", "33"], "--b must be a positive even number"),
    (["--bin", "1.5", "--b", "30", "--crop", "30"], "odd extraction square of 45 px"),
    (["--min_frames", "-1"], "--min_frames must not be negative"),
])
def test_bad_sizes(project, capsys, args, message):
    status, err = run(project, BASE + args, capsys)
    assert status == 1
    assert message in err[-1]
    assert not (project / "out" / "particles.star").exists()


def test_unsupported_option_is_named(project, capsys):
    status, err = run(project, BASE + ["--real_subtomo"], capsys)
    assert status == 1 and "--real_subtomo is not supported" in err[-1]


def test_unknown_flag_is_an_argparse_error(project, capsys):
    with pytest.raises(SystemExit) as e:
        run(project, BASE + ["--frobnicate"], capsys)
    assert e.value.code == 2


def test_missing_required_column(project, capsys):
    edit(project / "synthetic" / "tilt_series" / "TS_01.star", "_rlnDefocusU #6", "_rlnSomethingElse #6")
    status, err = run(project, BASE, capsys)
    assert status == 1 and "missing required column rlnDefocusU" in err[-1]


def test_missing_table(project, capsys):
    edit(project / "synthetic" / "particles.star", "data_particles", "data_particlez")
    status, err = run(project, BASE, capsys)
    assert status == 1 and "data_particles" in err[-1]


def test_missing_tilt_image_file(project, capsys):
    (project / "synthetic" / "tilt_series" / "TS_01.mrcs").unlink()
    status, err = run(project, BASE, capsys)
    assert status == 1 and "TS_01.mrcs" in err[-1]
    assert not (project / "out" / "particles.star").exists()


def test_tilt_image_of_wrong_size(project, capsys):
    ts = project / "synthetic" / "tilt_series" / "TS_01.star"
    write_mrc(project / "synthetic" / "tilt_series" / "odd.mrc", np.zeros((1, 200, 240), np.float32), 5.0)
    edit(ts, "21@synthetic/tilt_series/TS_01.mrcs", "synthetic/tilt_series/odd.mrc")
    status, err = run(project, BASE, capsys)
    assert status == 1 and "all tilt images must have one size" in err[-1]


def test_tilt_image_index_out_of_range(project, capsys):
    edit(project / "synthetic" / "tilt_series" / "TS_01.star", "21@synthetic", "99@synthetic")
    status, err = run(project, BASE, capsys)
    assert status == 1 and "99@synthetic/tilt_series/TS_01.mrcs does not exist" in err[-1]


def test_truncated_tilt_series(project, capsys):
    stack = project / "synthetic" / "tilt_series" / "TS_01.mrcs"
    data = stack.read_bytes()
    stack.write_bytes(data[: len(data) // 2])
    status, err = run(project, BASE, capsys)
    assert status == 1 and "TS_01.mrcs" in err[-1]


def test_truncated_star_file(project, capsys):
    path = project / "synthetic" / "particles.star"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])
    status, err = run(project, BASE, capsys)
    assert status == 1 and "particles.star" in err[-1]


def test_unknown_tomogram_particles_are_dropped_with_a_count(project, capsys):
    edit(project / "synthetic" / "particles.star", "       TS_01      TS_01/1 ", "       TS_99      TS_01/1 ")
    status, err = run(project, BASE, capsys)
    assert status == 0
    assert any("1 particle(s)" in line and "ignored" in line for line in err)
    assert (project / "out" / "particles.star").read_text().count("_stack2d.mrcs") == 19


def test_no_particle_of_a_known_tomogram(project, capsys):
    path = project / "synthetic" / "particles.star"
    path.write_text(path.read_text().replace("       TS_01  ", "       TS_99  "))
    status, err = run(project, BASE, capsys)
    assert status == 1 and "no particle belongs to a tomogram" in err[-1]


def test_inputs_unchanged_and_outputs_complete(project, capsys):
    before = {p: p.read_bytes() for p in (project / "synthetic").rglob("*") if p.is_file()}
    status, _ = run(project, BASE, capsys)
    assert status == 0
    assert before == {p: p.read_bytes() for p in (project / "synthetic").rglob("*") if p.is_file()}
    assert no_temporary_files(project / "out")
    assert len(list((project / "out" / "Subtomograms").rglob("*_stack2d.mrcs"))) == 20
