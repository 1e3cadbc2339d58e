"""The Dask client the cluster flags connect, the tasks' results as the programs need them, and what a
worker process keeps between the tasks of one run."""
import contextlib
import io
import logging
import os
import threading
import uuid
from collections import deque
from concurrent.futures import CancelledError

from ..runtime.errors import RelionPyError
from ..runtime.log import info

_mpi_started = []   # dask_mpi.initialize runs once per process
_worker_run = {"key": None, "run": None}
_worker_run_lock = threading.Lock()


@contextlib.contextmanager
def connect(opts):
    """A ``distributed.Client`` for the cluster the flags name; the LocalCluster (--workers) ends with it."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RelionPyError("the cluster flags need Dask distributed: pip install 'relion_py[distributed]'") from None
    # Dask's own log: warnings only, and none of the client's reconnection tracebacks (a lost scheduler is
    # reported as one error line by the program)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    if opts.mpi:   # start_mpi() made this process the client of the scheduler on rank 0
        with Client() as client:
            yield client
        return
    if opts.workers:
        # one Dask thread per worker process: each task runs its particles on --j threads itself
        with LocalCluster(n_workers=opts.workers, threads_per_worker=1, processes=True, dashboard_address=None) \
                as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = (Client(scheduler_file=opts.scheduler_file, timeout="30s") if opts.scheduler_file
                  else Client(opts.scheduler, timeout="30s"))
    except (OSError, TimeoutError, ValueError) as e:
        where = opts.scheduler_file or opts.scheduler
        raise RelionPyError(f"cannot reach the Dask scheduler ({where}): {e}") from None
    with client:
        yield client


def start_mpi():
    """--mpi, before the program reads anything: ranks 0 (scheduler) and >= 2 (workers) serve until the client
    ends and never return from here; rank 1 returns and runs the program as the client."""
    if _mpi_started:
        return
    try:
        import dask_mpi
    except ImportError:
        raise RelionPyError("--mpi needs dask-mpi and mpi4py: pip install 'relion_py[mpi]'") from None
    _mpi_started.append(True)
    dask_mpi.initialize(nthreads=1, local_directory=os.environ.get("TMPDIR", "/tmp"), dashboard=False)


def describe(client):
    workers = client.scheduler_info().get("workers", {})
    return f"{len(workers)} Dask worker{'s' if len(workers) != 1 else ''}"


def lost_scheduler(error):
    return RelionPyError(f"lost the Dask scheduler ({error}); the finished work is kept: rerun with "
                         "--only_do_unfinished to complete the run")


def task_result(future):
    """A finished task's result; the task's own exception is raised as the single-process path raises it, and a
    task the scheduler could not finish (it is gone) as one :func:`lost_scheduler` error."""
    from distributed import wait
    try:
        wait(future)
    except (OSError, TimeoutError, CancelledError) as e:
        raise lost_scheduler(str(e).splitlines()[0]) from None
    if future.status == "error":
        raise future.exception()
    if future.status != "finished":          # cancelled: the scheduler is gone
        raise lost_scheduler(f"task {future.key} was {future.status}")
    try:
        return future.result()
    except (OSError, TimeoutError, CancelledError) as e:
        raise lost_scheduler(str(e).splitlines()[0]) from None


def ordered_results(client, function, arguments, label):
    """Yield ``function(*args)`` for every ``args`` of ``arguments``, computed as Dask tasks, in the order of
    ``arguments``. At most two tasks per worker are submitted ahead of the one awaited, so that finished results
    waiting for their turn (each a whole accumulator) stay few."""
    arguments = list(arguments)
    info(f"{label}: {len(arguments)} tasks on {describe(client)}")
    run_id = uuid.uuid4().hex
    window = max(2, 2 * len(client.scheduler_info().get("workers", {})))
    pending = deque()
    todo = iter(enumerate(arguments))

    def submit_next():
        for k, args in todo:
            pending.append(client.submit(function, *args, key=f"relion-py-{label}-{run_id}-{k}", pure=False))
            return

    try:
        for _ in range(window):
            submit_next()
        while pending:
            result = task_result(pending[0])
            pending.popleft().release()
            submit_next()
            yield result
    finally:
        client.cancel(list(pending))


def worker_run(opts, cwd, build):
    """The run object ``build(opts)`` of this worker process, built once per run (``opts`` and project folder)
    and kept for the run's next tasks; the previous run's is closed. Building reads the same inputs as the
    client, whose log already carries their notes and warnings: the worker's copies are not printed again
    (a problem with the inputs is raised, not printed)."""
    key = (build.__qualname__, repr(opts), cwd)
    with _worker_run_lock:
        if _worker_run["key"] != key:
            if _worker_run["run"] is not None:
                _worker_run["run"].close()
                _worker_run["key"] = _worker_run["run"] = None
            if os.getcwd() != cwd:
                os.chdir(cwd)   # paths in the STAR files are relative to the project folder
            with contextlib.redirect_stderr(io.StringIO()):
                _worker_run["run"] = build(opts)
            _worker_run["key"] = key
        return _worker_run["run"]
