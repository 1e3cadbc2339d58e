"""What the cluster tests share: a writable copy of the fixture project, byte comparison of output folders, a
scheduler + worker started from the command line as dask-jobqueue or an administrator would start them, and a
run during which a busy worker is killed."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import FIXTURES


def copy_project(tmp_path):
    """A writable copy of the fixture project (tilt series and STAR files): tmp_path/project."""
    dest = tmp_path / "project" / "synthetic"
    shutil.copytree(FIXTURES / "synthetic", dest, ignore=shutil.ignore_patterns("ground_truth", "spa2d"))
    return dest.parent


def without_time_stamp(path):
    """The file's bytes; for MRC files without the time stamp of label 0 ("Relion    06-Dec-26  01:13:45"),
    which differs between any two runs, single-process ones included."""
    raw = bytearray(path.read_bytes())
    if path.suffix in (".mrc", ".mrcs") and raw[224:234] == b"Relion    ":   # relion_py writes it, as RELION
        raw[234:254] = bytes(20)
    return bytes(raw)


def files_of(folder):
    return {str(p.relative_to(folder)): without_time_stamp(p) for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def assert_same_files(a, b):
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    assert len(fa) > 3
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, different


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


def run_killing_a_worker(main, argv, ready=lambda: True, observe=lambda: True):
    """``main(argv + --scheduler …)`` on a LocalCluster of 2 worker processes, SIGKILLing the first worker seen
    busy once ``ready()`` holds. Returns (exit status, ``observe()`` at the kill, or None if the run ended
    first)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        status = []
        run = threading.Thread(target=lambda: status.append(main(argv + ["--scheduler", cluster.scheduler_address])))
        run.start()
        killed = None
        while killed is None and run.is_alive():
            busy = [addr for addr, keys in client.processing().items() if keys]
            if busy and ready():
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                killed = observe()
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        run.join()
    return status[0], killed
