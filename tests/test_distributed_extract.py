"""relion-py-extract on a Dask cluster writes exactly the single-process run's files: a LocalCluster of two
worker processes (--workers 2, 2-D and 3-D), a scheduler started from a scheduler file, a task failing on bad input."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_helpers import assert_same_files, copy_project, run_killing_a_worker, scheduler_and_worker
from conftest import working_directory
from relion_py.cli.extract import main

pytest.importorskip("distributed")

BASE = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--j", "1"]
MODES = {"2d": ["--stack2d", "--b", "32", "--crop", "24"], "3d": ["--b", "32", "--crop", "16", "--ctf"]}


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path)


@pytest.fixture
def small_batches(monkeypatch):
    """Several tasks per tomogram (the fixture has 23 particles)."""
    import relion_py.distributed.extract as distributed_extract
    monkeypatch.setattr(distributed_extract, "BATCH", 5)


def run_twice(argv, cluster_flags):
    """The single-process run into out/ (then moved to single/), and the cluster run into out/: the same
    command line but for the cluster flags (the output paths in the STAR files and note.txt are the same)."""
    assert main(argv + ["--o", "out/"]) == 0
    os.rename("out", "single")
    assert main(argv + ["--o", "out/"] + cluster_flags) == 0


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_local_workers_write_the_single_process_files(project, mode, small_batches):
    argv = BASE + MODES[mode]
    with working_directory(project):
        run_twice(argv, ["--workers", "2"])
    assert_same_files(project / "single", project / "out")


def test_only_do_unfinished_across_runs(project, small_batches):
    argv = BASE + MODES["2d"] + ["--only_do_unfinished"]
    with working_directory(project):
        run_twice(argv, ["--workers", "2"])
        stacks = sorted((project / "out" / "Subtomograms").rglob("*_stack2d.mrcs"))
        for p in stacks[::2]:
            p.unlink()
        kept = {p: p.stat().st_mtime_ns for p in stacks[1::2]}
        assert main(argv + ["--o", "out/", "--workers", "2"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert all(p.exists() for p in stacks)
    assert_same_files(project / "single", project / "out")


def test_scheduler_file(project, tmp_path, small_batches):
    scheduler_file = tmp_path / "scheduler.json"
    with scheduler_and_worker(scheduler_file):
        with working_directory(project):
            run_twice(BASE + MODES["2d"], ["--scheduler_file", str(scheduler_file)])
        assert_same_files(project / "single", project / "out")


def test_failing_task_gives_the_single_process_error(project, capsys):
    """A task that fails (here: its output folder cannot be made) stops the run with the single-process error."""
    argv = BASE + MODES["2d"] + ["--o", "out/"]
    errors = []
    with working_directory(project):
        for cluster_flags in ([], ["--workers", "2"]):
            shutil.rmtree("out", ignore_errors=True)
            os.makedirs("out/Subtomograms")
            Path("out/Subtomograms/TS_01").write_text("a file where the particles' folder should be")
            assert main(argv + cluster_flags) == 1
            errors.append(capsys.readouterr().err.strip().splitlines()[-1])
            assert not Path("out/particles.star").exists() or not cluster_flags
    assert errors[0] == errors[1]
    assert errors[0].startswith("relion-py-extract: error: cannot create the output folder out/Subtomograms/TS_01")


def test_no_dask_import_on_the_single_process_path():
    out = subprocess.run([sys.executable, "-c", "import sys, relion_py.cli.extract, relion_py.cli.reconstruct, relion_py.cli.portal; "
                          "print(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))"],
                         capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "False"


def test_worker_killed_mid_run(project, monkeypatch):
    """SIGKILL a worker that is extracting: Dask reruns its tasks on the restarted worker, and every file is
    still the single-process one (no partial file under a final name)."""
    import relion_py.distributed.extract as distributed_extract
    monkeypatch.setattr(distributed_extract, "BATCH", 1)
    argv = BASE + MODES["3d"]
    with working_directory(project):
        assert main(argv + ["--o", "out/"]) == 0
        os.rename("out", "single")
        status, killed = run_killing_a_worker(main, argv + ["--o", "out/"],
                                              ready=lambda: any(Path("out").rglob("*_data.mrc")),
                                              observe=lambda: not Path("out/particles.star").exists())
    assert killed, "the run ended before a worker could be killed"
    assert status == 0
    partial = [p for p in (project / "out").rglob("*") if ".tmp-" in p.name]
    for p in partial:   # what the killed worker was writing, under its temporary name only
        p.unlink()
    assert_same_files(project / "single", project / "out")


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs OpenMPI's mpirun (.ci/run installs openmpi-bin)")
def test_mpirun(project):
    """mpirun -n 4 relion-py-extract --mpi: rank 0 the scheduler, rank 1 the client, ranks 2 and 3 workers."""
    argv = BASE + MODES["2d"] + ["--o", "out/"]
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    program = str(Path(sys.executable).parent / "relion-py-extract")
    with working_directory(project):
        assert main(argv) == 0
        os.rename("out", "single")
        done = subprocess.run(["mpirun", "-n", "4", "--oversubscribe", program] + argv + ["--mpi"], env=env,
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_files(project / "single", project / "out")


def test_lost_scheduler_then_only_do_unfinished(project, tmp_path, capsys, monkeypatch):
    """The scheduler dies mid-run: one clear error line, exit 1, no particles.star; a rerun with
    --only_do_unfinished (here on a local cluster) completes the single-process files."""
    import signal
    import threading

    import relion_py.distributed.extract as distributed_extract
    monkeypatch.setattr(distributed_extract, "BATCH", 1)
    scheduler_file = tmp_path / "scheduler.json"
    argv = BASE + MODES["3d"] + ["--only_do_unfinished"]
    with scheduler_and_worker(scheduler_file) as procs:
        with working_directory(project):
            assert main(argv + ["--o", "out/"]) == 0
            os.rename("out", "single")
            capsys.readouterr()
            status = []
            run = threading.Thread(target=lambda: status.append(
                main(argv + ["--o", "out/", "--scheduler_file", str(scheduler_file)])))
            run.start()
            while run.is_alive() and not list(Path("out").rglob("*_data.mrc")):
                time.sleep(0.01)
            procs[0].send_signal(signal.SIGKILL)
            run.join()
            assert status == [1]
            assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
                "relion-py-extract: error: lost the Dask scheduler")
            assert not Path("out/particles.star").exists()
            assert main(argv + ["--o", "out/", "--workers", "2"]) == 0
    assert_same_files(project / "single", project / "out")
