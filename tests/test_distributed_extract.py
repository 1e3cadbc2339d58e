"""relion-py-extract on a Dask cluster writes exactly the single-process run's files: a LocalCluster of two
worker processes (--workers 2, 2-D and 3-D), a scheduler started from a scheduler file, a task failing on bad input."""
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, working_directory
from relion_py.cli.extract import main

pytest.importorskip("distributed")

BASE = ["--t", "synthetic/tomograms.star", "--p", "synthetic/particles.star", "--j", "1"]
MODES = {"2d": ["--stack2d", "--b", "32", "--crop", "24"], "3d": ["--b", "32", "--crop", "16", "--ctf"]}


@pytest.fixture
def project(tmp_path):
    dest = tmp_path / "project" / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


@pytest.fixture
def small_batches(monkeypatch):
    """Several tasks per tomogram (the fixture has 23 particles)."""
    import relion_py.distributed.extract as distributed_extract
    monkeypatch.setattr(distributed_extract, "BATCH", 5)


def without_time_stamp(path):
    """The file's bytes; for MRC files without the time stamp of label 0 ("Relion    06-Dec-26  01:13:45"),
    which differs between any two runs, single-process ones included."""
    raw = bytearray(path.read_bytes())
    if path.suffix in (".mrc", ".mrcs"):
        assert raw[224:234] == b"Relion    "
        raw[234:254] = bytes(20)
    return bytes(raw)


def files_of(folder):
    return {str(p.relative_to(folder)): without_time_stamp(p) for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def run_twice(argv, cluster_flags):
    """The single-process run into out/ (then moved to single/), and the cluster run into out/: the same
    command line but for the cluster flags (the output paths in the STAR files and note.txt are the same)."""
    assert main(argv + ["--o", "out/"]) == 0
    os.rename("out", "single")
    assert main(argv + ["--o", "out/"] + cluster_flags) == 0


def assert_same_files(a, b):
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    assert len(fa) > 3
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, different


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


@contextlib.contextmanager
def scheduler_and_worker(scheduler_file):
    """A `dask scheduler` writing ``scheduler_file`` and one one-thread `dask worker` joined to it, as
    dask-jobqueue or a cluster admin would start them; yields their processes [scheduler, worker]."""
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
                               str(scheduler_file), "--port", "0", "--dashboard-address", ":0"],
                              stderr=subprocess.DEVNULL)]
    try:
        while not scheduler_file.exists():
            assert procs[0].poll() is None
            time.sleep(0.2)
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                       str(scheduler_file), "--nthreads", "1", "--no-dashboard"],
                                      stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(timeout=60)


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
    out = subprocess.run([sys.executable, "-c", "import sys, relion_py.cli.extract, relion_py.programs.subtomo; "
                          "print(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))"],
                         capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "False"


def test_worker_killed_mid_run(project, monkeypatch):
    """SIGKILL a worker that is extracting: Dask reruns its tasks on the restarted worker, and every file is
    still the single-process one (no partial file under a final name)."""
    import signal
    import threading

    from distributed import Client, LocalCluster

    import relion_py.distributed.extract as distributed_extract
    monkeypatch.setattr(distributed_extract, "BATCH", 1)
    argv = BASE + MODES["3d"]
    with working_directory(project):
        assert main(argv + ["--o", "out/"]) == 0
        os.rename("out", "single")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            status = []
            run = threading.Thread(target=lambda: status.append(
                main(argv + ["--o", "out/", "--scheduler", cluster.scheduler_address])))
            run.start()
            killed = None
            while killed is None and run.is_alive():
                busy = [addr for addr, keys in client.processing().items() if keys]
                done = list(Path("out/Subtomograms").rglob("*_data.mrc")) if Path("out/Subtomograms").exists() else []
                if busy and done:
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    killed = not Path("out/particles.star").exists()
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
            run.join()
    assert killed, "the run ended before a worker could be killed"
    assert status == [0]
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
