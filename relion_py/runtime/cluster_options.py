"""The cluster flags every program accepts (--scheduler, --scheduler_file, --workers, --mpi). Plain options: the
Dask code that uses them lives in relion_py.distributed, imported only when one is given."""
import dataclasses
from dataclasses import dataclass

from .errors import RelionPyError
from .options import option

CLUSTER = "Cluster (Dask distributed)"


@dataclass
class ClusterOptions:
    """--scheduler, --scheduler_file, --workers, --mpi: at most one; none of them keeps the single-process run."""

    scheduler: str = option("", "Run on the running Dask scheduler at this address (e.g. tcp://host:8786)", CLUSTER,
                            metavar="ADDRESS")
    scheduler_file: str = option("", "Run on the Dask scheduler described by this file (written by dask-jobqueue, "
                                 "dask-mpi or `dask scheduler --scheduler-file`)", CLUSTER, metavar="FILE")
    workers: int = option(0, "Start a local Dask cluster of N worker processes (--j threads each)", CLUSTER)
    mpi: bool = option(False, "Under mpirun: rank 0 is the Dask scheduler, rank 1 this client, ranks >= 2 workers "
                       "(needs relion_py[mpi])", CLUSTER)


def wants_cluster(opts):
    """Whether ``opts`` asks for a Dask cluster (checks that it asks for at most one)."""
    chosen = [f"--{n}" for n in ("scheduler", "scheduler_file", "workers", "mpi") if getattr(opts, n)]
    if len(chosen) > 1:
        raise RelionPyError(f"{' and '.join(chosen)} cannot be combined: choose one way to reach the cluster")
    if opts.workers < 0:
        raise RelionPyError("--workers must not be negative")
    return bool(chosen)


def cluster_defaults(opts):
    """``opts`` without its cluster flags: what the workers run (and what the single-process run would be)."""
    return dataclasses.replace(opts, scheduler="", scheduler_file="", workers=0, mpi=False)


def without_cluster_flags(words):
    """argv words without the cluster flags (and their values): the command line of the equivalent
    single-process run, which note.txt records so that both runs write the same bytes."""
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("--scheduler", "--scheduler_file", "--workers"):
            skip = True
        elif w != "--mpi" and not w.startswith(("--scheduler=", "--scheduler_file=", "--workers=")):
            out.append(w)
    return out
