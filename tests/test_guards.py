"""Issue 14's guards: resume trusts only complete particles, SIGTERM and RELION's pipeline-control files,
outputs never overwrite inputs, user mistakes get one line and exit 1, failed runs leave no leftovers."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, working_directory
from relion_py.cli import extract, reconstruct
from relion_py.cli.common import run_cli
from relion_py.runtime.errors import RelionPyError

T = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star"]
SMALL = ["--b", "32", "--crop", "24", "--j", "1"]


@pytest.fixture
def project(tmp_path):
    """A writable copy of the fixture project's inputs."""
    dest = tmp_path / "project" / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


def run(project, main, argv, capsys):
    with working_directory(project):
        status = main(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def temporaries(root):
    return [p for p in Path(root).rglob("*") if ".tmp-" in p.name]


def test_resume_redoes_a_particle_missing_its_weights(project, capsys):
    argv = T + SMALL + ["--o", "r/"]
    assert run(project, extract.main, argv, capsys)[0] == 0
    folder = project / "r" / "Subtomograms" / "TS_01"
    weights = sorted(folder.glob("*_weights.mrc"))[0]
    expected = weights.read_bytes()
    weights.unlink()
    stale = folder / ".5_data.mrc.tmp-999999999"            # a killed run's temporary (no such process)
    stale.write_bytes(b"partial")
    status, err = run(project, extract.main, argv + ["--only_do_unfinished"], capsys)
    assert status == 0, err
    assert weights.read_bytes() == expected
    assert not temporaries(project / "r")


def test_resume_2d_trusts_existing_stacks(project, capsys):
    argv = T + SMALL + ["--stack2d", "--o", "r/"]
    assert run(project, extract.main, argv, capsys)[0] == 0
    stacks = sorted((project / "r" / "Subtomograms").rglob("*_stack2d.mrcs"))
    stacks[0].unlink()
    status, err = run(project, extract.main, argv + ["--only_do_unfinished"], capsys)
    assert status == 0 and stacks[0].exists()
    assert any(f"skipping {len(stacks) - 1} particles" in line for line in err), err


def _terminate_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)                       # never reached: the handler raises at once
    raise AssertionError("SIGTERM was not handled")


@pytest.mark.parametrize("func, status, exit_file", [
    (lambda: None, 0, "RELION_JOB_EXIT_SUCCESS"),
    (lambda: (_ for _ in ()).throw(RelionPyError("bad")), 1, "RELION_JOB_EXIT_FAILURE"),
    (_terminate_self, 143, "RELION_JOB_EXIT_ABORTED"),
])
def test_exit_status_and_pipeline_control_file(tmp_path, capsys, func, status, exit_file):
    control = str(tmp_path) + "/"
    assert run_cli("prog", func, control) == status
    assert [p.name for p in tmp_path.iterdir()] == [exit_file]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1
    if status == 143:
        assert "stopped by SIGTERM" in err[0] and "finished" in err[0]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_extract_writes_the_success_file(project, capsys):
    control = project / "job"
    control.mkdir()
    status, err = run(project, extract.main, T + SMALL + ["--stack2d", "--o", "r/", "--pipeline_control", "job/"],
                      capsys)
    assert status == 0, err
    assert [p.name for p in control.iterdir()] == ["RELION_JOB_EXIT_SUCCESS"]
