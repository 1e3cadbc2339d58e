"""relion-py-shims: RELION program names on PATH that run relion_py, with the RELION 5.0.1 GUI's own
command lines (src/pipeline_jobs.cpp: getCommandsTomoSubtomoJob, getCommandsTomoReconPartJob and
prepareFinalCommand, which appends --pipeline_control to every relion_ command)."""
import os
import subprocess

import pytest

from conftest import CASES, FIXTURES, compare_with_relion, mirror_fixtures
from relion_py.cli import shim
from relion_py.cli.shim import MARKER, PROGRAMS, find_relion, flags_relion_py_cannot_run
from relion_py.cli.shims import write_shims
from relion_py.runtime.errors import RelionPyError


@pytest.fixture(scope="module")
def shims(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shims")
    write_shims(str(folder))
    return folder


def job_folder(command):
    """The job folder of a command line: its --o folder (relion_reconstruct: the folder of its --o file)."""
    output = command.split(" --o ")[1].split()[0]
    return output if output.endswith("/") else os.path.dirname(output)


def run_job(command, project, shims, path_tail=None):
    """Run a GUI command line from ``project`` with the shims first on PATH, as the GUI does
    (``sh -c`` with stdout → run.out, stderr → run.err of the job folder)."""
    path = os.pathsep.join([str(shims)] + ([str(path_tail)] if path_tail else []) + [os.environ["PATH"]])
    job = job_folder(command)
    os.makedirs(project / job, exist_ok=True)
    with open(project / job / "run.out", "w") as out, open(project / job / "run.err", "w") as err:
        status = subprocess.call(["sh", "-c", command], cwd=project, stdout=out, stderr=err,
                                 env={**os.environ, "PATH": path})
    return status, project / job


def test_writes_one_executable_per_relion_program(shims):
    names = sorted(os.listdir(shims))
    assert names == sorted(PROGRAMS)
    for name in names:
        path = shims / name
        assert os.access(path, os.X_OK) and MARKER in path.read_text()


def test_never_replaces_a_real_program(tmp_path):
    real = tmp_path / "relion_tomo_subtomo"
    real.write_text("#!/bin/sh\necho real RELION\n")
    with pytest.raises(RelionPyError, match="not a relion_py shim"):
        write_shims(str(tmp_path))
    assert real.read_text() == "#!/bin/sh\necho real RELION\n"
    write_shims(str(tmp_path), force=True)
    assert MARKER in real.read_text()


# The GUI's command lines, verbatim in form (double spaces included), with the fixture cases' parameters.
GUI_JOBS = {
    "a_subtomo_stack2d": "`which relion_tomo_subtomo` --t synthetic/tomograms.star --p synthetic/particles.star "
                         "--theme classic --o Extract/job005/ --b 64 --crop 48 --bin 1 --min_frames 1 --stack2d  "
                         "--j 2  --pipeline_control Extract/job005/",
    "h3_subtomo_stack2d_minframes_maxdose": "`which relion_tomo_subtomo` --t synthetic/tomograms.star --p "
                         "synthetic/particles.star --theme classic --o Extract/job006/ --b 32 --crop 24 --bin 1 "
                         "--max_dose 60 --min_frames 21 --stack2d  --j 2  --pipeline_control Extract/job006/",
    "e_subtomo_3d": "`which relion_tomo_subtomo` --t synthetic/tomograms.star --p synthetic/particles.star "
                    "--theme classic --o Extract/job007/ --b 48 --crop 32 --bin 1 --min_frames 1 --j 2  "
                    "--pipeline_control Extract/job007/",
    "f2_reconstruct_particle_c1_snr": "`which relion_tomo_reconstruct_particle` --t synthetic/tomograms.star --p "
                    "synthetic/particles.star --theme classic --o Reconstruct/job008/ --b 48 --crop 32 --bin 1 "
                    "--SNR 10 --j 2 --j_out 2 --j_in 1  --sym C1  --pipeline_control Reconstruct/job008/",
    "i6_reconstruct_particle_helical": "`which relion_tomo_reconstruct_particle` --t synthetic/tomograms.star --p "
                    "synthetic/particles.star --theme classic --o Reconstruct/job009/ --b 28 --crop 20 --bin 1 "
                    "--nr_helical_asu 3 --helical_twist 30 --helical_rise 12 --j 2 --j_out 2 --j_in 1  --sym C1  "
                    "--pipeline_control Reconstruct/job009/",
}


@pytest.mark.parametrize("case", sorted(GUI_JOBS))
def test_gui_command_line_gives_relions_files(case, shims, tmp_path):
    project = mirror_fixtures(tmp_path / "project", case)
    status, job = run_job(GUI_JOBS[case], project, shims)
    assert status == 0, (job / "run.err").read_text()
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    assert "→ relion-py-" in (job / "run.out").read_text()
    job_prefix = os.path.relpath(job, project) + "/"
    ok, report = compare_with_relion(FIXTURES / case, job, ["--path-prefix-map", f"{case}/={job_prefix}",
                                                            *CASES[case].get("compare_args", [])])
    assert ok, report[-3000:]


def test_relion_reconstruct_runs_in_image_mode(shims, tmp_path):
    case = "g2_reconstruct_spa2d"
    project = mirror_fixtures(tmp_path / "project", case)
    command = "relion_reconstruct --i synthetic/spa2d/particles.star --o Reconstruct/job010/rec.mrc --ctf"
    status, job = run_job(command, project, shims)
    assert status == 0, (job / "run.err").read_text()
    ok, report = compare_with_relion(FIXTURES / case / "rec.mrc", job / "rec.mrc")
    assert ok, report[-3000:]


@pytest.fixture
def fake_relion(tmp_path):
    """A stand-in for a real RELION installation further down PATH: it records its arguments."""
    folder = tmp_path / "relion_bin"
    folder.mkdir()
    for name in PROGRAMS:
        exe = folder / name
        exe.write_text(f'#!/bin/sh\necho "real {name}: $*" > "$RELION_TEST_RECORD"\n')
        exe.chmod(0o755)
    return folder


@pytest.mark.parametrize("flag", ["--real_subtomo", "--some_future_flag"])
def test_unsupported_flag_hands_over_to_real_relion(flag, shims, fake_relion, tmp_path):
    project = mirror_fixtures(tmp_path / "project", "none")
    record = tmp_path / "record.txt"
    os.environ["RELION_TEST_RECORD"] = str(record)
    try:
        command = (f"relion_tomo_subtomo --t synthetic/tomograms.star --p synthetic/particles.star --o Extract/job011/ "
                   f"--b 32 {flag} --pipeline_control Extract/job011/")
        status, job = run_job(command, project, shims, path_tail=fake_relion)
    finally:
        del os.environ["RELION_TEST_RECORD"]
    assert status == 0
    assert record.read_text().startswith("real relion_tomo_subtomo: --t synthetic/tomograms.star")
    assert f"{flag} not supported by relion_py: handing the command to {fake_relion}" in (job / "run.out").read_text()
    assert not (job / "particles.star").exists()


def test_unsupported_flag_without_relion_is_one_error_line(shims, tmp_path):
    project = mirror_fixtures(tmp_path / "project", "none")
    command = "relion_tomo_subtomo --t synthetic/tomograms.star --p synthetic/particles.star --o Extract/job012/ --b 32 --real_subtomo"
    status, job = run_job(command, project, shims)
    assert status != 0
    err = (job / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "--real_subtomo" in err[0] and "not supported" in err[0]


def test_flag_check_knows_relions_flags():
    assert flags_relion_py_cannot_run("relion_tomo_subtomo", ["--i", "x", "--theme", "classic", "--b", "4"]) == []
    assert flags_relion_py_cannot_run("relion_tomo_subtomo", ["--real_subtomo", "--b=4", "--xyz"]) == [
        "--real_subtomo", "--xyz"]
    assert flags_relion_py_cannot_run("relion_reconstruct", ["--i", "p.star", "--3d_rot", "--ctf"]) == []
    assert flags_relion_py_cannot_run("relion_tomo_reconstruct_particle", ["--j_out", "2", "--j_in", "1"]) == []


def test_real_relion_is_found_past_the_shims(shims, fake_relion, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join([str(shims), str(fake_relion)]))
    assert find_relion("relion_tomo_subtomo") == str(fake_relion / "relion_tomo_subtomo")
    monkeypatch.setenv("PATH", str(shims))
    assert find_relion("relion_tomo_subtomo") is None


def test_mpi_name_without_mpirun_runs_single_process(shims, tmp_path):
    project = mirror_fixtures(tmp_path / "project", "none")
    command = ("relion_tomo_subtomo_mpi --t synthetic/tomograms.star --p synthetic/particles.star --o Extract/job013/ "
               "--b 32 --crop 24 --stack2d --j 2")
    status, job = run_job(command, project, shims)
    assert status == 0, (job / "run.err").read_text()
    assert "launched without mpirun; relion_py runs it in one process" in (job / "run.out").read_text()
    assert (job / "particles.star").exists()


@pytest.mark.parametrize("size", [2, 3])
def test_mpi_ranks_above_zero_leave_the_work_to_rank_zero(tmp_path, monkeypatch, capsys, size):
    """Under mpirun without a Dask cluster to make (2 ranks, or no relion_py[mpi]): ranks above 0 exit at
    once, rank 0 does the work in one process."""
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", str(size))
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    if size == 3:
        monkeypatch.setattr(shim, "_has_dask_mpi", lambda: False)
    assert shim.run("relion_tomo_reconstruct_particle_mpi", ["--o", str(tmp_path / "x/"), "--b", "32"]) == 0
    assert capsys.readouterr().out == "" and not (tmp_path / "x").exists()


@pytest.mark.parametrize("case, program", [("a_subtomo_stack2d", "relion-py-extract"),
                                           ("f2_reconstruct_particle_c1_snr", "relion-py-reconstruct")])
def test_mpi_name_under_mpirun_runs_on_dask_mpi(shims, tmp_path, case, program):
    """What the GUI runs with "Number of MPI procs" 4 for its "Extract subtomos" and "Reconstruct particle" jobs:
    mpirun -n 4 relion_tomo_subtomo_mpi / relion_tomo_reconstruct_particle_mpi … → relion_py --mpi on dask-mpi
    (rank 0 scheduler, rank 1 client, ranks 2-3 workers); RELION's files."""
    project = mirror_fixtures(tmp_path / "project", case)
    name = GUI_JOBS[case].split("`")[1].split()[1]                      # `which relion_...`
    command = "mpirun -n 4 --oversubscribe " + GUI_JOBS[case].replace(f"`which {name}`", f"`which {name}_mpi`")
    command = command.replace("--j 2 ", "--j 1 ")
    job_folder_name = command.split("--o ")[1].split()[0]
    os.environ.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        status, job = run_job(command, project, shims)
    finally:
        del os.environ["OMPI_ALLOW_RUN_AS_ROOT"], os.environ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"]
    assert status == 0, (job / "run.err").read_text()[-2000:]
    assert f"4 MPI ranks → {program} --mpi" in (job / "run.out").read_text()
    assert (job / "RELION_JOB_EXIT_SUCCESS").exists()
    ok, report = compare_with_relion(FIXTURES / case, job, ["--path-prefix-map", f"{case}/={job_folder_name}"])
    assert ok, report[-3000:]
