"""The cluster flags every program shares, and the Dask client they connect."""
import logging
import os
from contextlib import contextmanager

from ..runtime.errors import RelionPyError

_mpi_started = []   # dask_mpi.initialize runs once per process


@contextmanager
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
