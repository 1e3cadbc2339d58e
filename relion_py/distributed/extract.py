"""relion_tomo_subtomo on a Dask cluster: tasks of (tomogram, batch of BATCH particles in STAR order), each
extracting its particles from the tilt series (a local file on a shared file system, or the portal's zarr that
the worker fetches itself) and writing their finished files into the shared output folder (temporary name +
rename). The client writes particles.star and optimisation_set.star once every task has finished."""
import os
import uuid

from ..programs.subtomo import ExtractionRun, extract_subtomograms
from ..runtime.errors import RelionPyError
from ..runtime.log import info
from ..runtime.cluster_options import cluster_defaults, without_cluster_flags
from .cluster import connect, describe, start_mpi, task_result, worker_run

BATCH = 16             # fewest particles per task: each particle's files depend on it alone, so the cut never
TASKS_PER_WORKER = 8   # changes a byte; about this many tasks per worker (each task costs ~20 ms: its tomogram's
                       # weights, a writer thread, its last write not overlapped; measured in bench/README.md)


def extract_on_cluster(opts, command=None, batch=None):
    """:func:`relion_py.programs.subtomo.extract_subtomograms` with its batches run as Dask tasks."""
    if opts.sum and not opts.stack2d:
        raise RelionPyError("--sum is not supported on a cluster (its float32 sums depend on the particle order)")
    if opts.mpi:
        start_mpi()
    worker_opts = cluster_defaults(opts)

    def run_batches(run):
        with connect(opts) as client:
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            total = sum(len(geom.rows) for geom in run.kept.values())
            size = batch or max(BATCH, -(-total // (TASKS_PER_WORKER * workers)))
            return _run_tasks(client, worker_opts, run.batches(size), os.getcwd())

    return extract_subtomograms(worker_opts, command=without_cluster_flags(command) if command else None,
                                run_batches=run_batches)


def _run_tasks(client, opts, batches, cwd):
    from distributed import as_completed
    info(f"Extracting {len(batches)} batches of particles on {describe(client)}")
    run_id = uuid.uuid4().hex
    futures = [client.submit(extract_batch, opts, cwd, *b, key=f"relion-py-extract-{run_id}-{k}", pure=False)
               for k, b in enumerate(batches)]
    n_images = 0
    try:
        for future in as_completed(futures):     # any order: each particle's files depend on it alone
            n_images += task_result(future)
    finally:
        client.cancel(futures)
    return n_images


def extract_batch(opts, cwd, name, start, stop):
    """The task: extract kept particles start:stop of tomogram ``name`` (on --j threads) and write their files.
    The run's inputs and visibility pass are read once per worker process and kept for its next tasks."""
    run = worker_run(opts, cwd, _selected_run)
    return run.extract(name, start, stop, run.threads)


def _selected_run(opts):
    run = ExtractionRun(opts)
    run.select()
    return run
