"""relion_py's CCP-EM pipeliner job types (relion_py.pipeliner), created and run through the pipeliner's own
API (``PipelinerProject.run_job``) on the synthetic demo project: each job writes the files relion_py's
CLI writes for the RELION command line the pipeliner's RELION job would run."""
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conftest import FIXTURES, working_directory

from pipeliner.api.manage_project import PipelinerProject
from pipeliner.data_structure import RELION_SUCCESS_FILE, SUCCESS_FILE
from pipeliner.job_factory import new_job_of_type


JOB_TYPES = {"relion_py.pseudosubtomo": "RelionPyExtractJob",
             "relion_py.reconstructparticletomo": "RelionPyReconstructParticleJob",
             "relion_py.reconstruct": "RelionPyReconstructJob"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A new pipeliner project holding the synthetic demo data; the job subprocesses find relion_py's
    commands on PATH (this interpreter's bin folder, as in an activated virtual environment)."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    work = tmp_path / "project"
    work.mkdir()
    (work / "synthetic").symlink_to(FIXTURES / "synthetic")
    with working_directory(work):
        yield PipelinerProject(make_new_project=True)


def _run(project, params, relion_control=True):
    """Run a job in the foreground; its output folder. ``relion_control``: RELION's job ran under
    ``--pipeline_control``, so relion_py itself writes RELION_JOB_EXIT_SUCCESS."""
    job = project.run_job(params, run_in_foreground=True)
    out = Path(job.output_dir)
    assert (out / SUCCESS_FILE).exists(), (out / "run.err").read_text()[-2000:]
    assert (out / RELION_SUCCESS_FILE).exists() == relion_control
    return out


def _cli(*argv):
    """Run a relion_py command as the pipeliner does (its own process); its exit status."""
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def _same_files(expected, got, names):
    """Byte-identical MRC files but for the header's text labels (bytes 224-1023), which hold the time
    of writing."""
    for name in names:
        a, b = (expected / name).read_bytes(), (got / name).read_bytes()
        assert a[:224] == b[:224] and a[1024:] == b[1024:], name


def test_entry_points_name_the_job_classes():
    found = {ep.name: ep.value for ep in entry_points(group="ccpem_pipeliner.jobs")}
    for name, cls in JOB_TYPES.items():
        assert found[name] == f"relion_py.pipeliner.jobs:{cls}"
        assert type(new_job_of_type(name)).__name__ == cls


def test_commands_are_relion_py_with_processes_times_threads():
    """mpirun and the _mpi program go; --theme goes; --j = MPI processes x threads."""
    job = new_job_of_type("relion_py.reconstructparticletomo")
    job.output_dir = "Reconstruct/job002/"
    for name, value in (("in_optimisation", "a/optimisation_set.star"), ("do_use_direct_entries", False),
                        ("nr_mpi", 3), ("nr_threads", 2), ("box_size", 48), ("crop_size", 32),
                        ("binfactor", 1), ("point_group", "c2")):
        job.joboptions[name].value = value
    [command] = job.get_commands()
    assert [str(w) for w in command.cmd] == [
        "relion-py-reconstruct", "--i", "a/optimisation_set.star", "--o", "Reconstruct/job002/", "--b", "48",
        "--crop", "32", "--bin", "1", "--sym", "C2", "--j_out", "2", "--j_in", "1", "--j", "6"]
    assert command.relion_control


def test_extract_job(project, tmp_path):
    out = _run(project, {"_rlnJobTypeLabel": "relion_py.pseudosubtomo",
                         "in_optimisation": "synthetic/optimisation_set.star", "box_size": 48,
                         "crop_size": 32, "binfactor": 1, "do_float16": False, "nr_threads": 2})
    assert out.as_posix() == "Extract/job001"
    expected = Path("expected/")
    assert _cli("relion-py-extract", *["--i", "synthetic/optimisation_set.star", "--o", "expected/", "--b", "48",
                             "--crop", "32", "--bin", "1", "--min_frames", "1", "--stack2d", "--j", "2"]) == 0
    stacks = sorted(p.relative_to(expected) for p in expected.rglob("*.mrcs"))
    assert stacks
    _same_files(expected, out, stacks)
    # the same particles.star but for the output folder inside image names
    assert ((out / "particles.star").read_text()
            == (expected / "particles.star").read_text().replace("expected/", "Extract/job001/"))
    assert project.get_job("Extract/job001/") is not None


def test_reconstruct_particle_job(project):
    out = _run(project, {"_rlnJobTypeLabel": "relion_py.reconstructparticletomo",
                         "do_use_direct_entries": False, "in_optimisation": "synthetic/optimisation_set.star",
                         "box_size": 48, "crop_size": 32, "binfactor": 1, "point_group": "C1"})
    assert _cli("relion-py-reconstruct", *["--i", "synthetic/optimisation_set.star", "--o", "expected/", "--b", "48",
                                 "--crop", "32", "--bin", "1", "--sym", "C1", "--j_out", "1", "--j_in", "1",
                                 "--j", "1"]) == 0
    _same_files(Path("expected"), out, ["merged.mrc", "half1.mrc", "half2.mrc"])


def test_reconstruct_job_with_half_maps(project):
    out = _run(project, {"_rlnJobTypeLabel": "relion_py.reconstruct",
                         "input_particles": "synthetic/spa2d/particles.star", "do_halfmaps": True,
                         "do_ctf": True, "sym": "C1"}, relion_control=False)
    os.mkdir("expected")
    for subset, name in ((None, "reconstruction.mrc"), (1, "reconstruction_half1.mrc"),
                         (2, "reconstruction_half2.mrc")):
        argv = ["--i", "synthetic/spa2d/particles.star", "--o", f"expected/{name}", "--ctf", "--sym", "C1"]
        assert _cli("relion-py-reconstruct", *argv, *(["--subset", str(subset)] if subset else []), "--j", "1") == 0
    _same_files(Path("expected"), out, ["reconstruction.mrc", "reconstruction_half1.mrc",
                                        "reconstruction_half2.mrc"])
