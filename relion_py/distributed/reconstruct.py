"""relion_tomo_reconstruct_particle and relion_reconstruct on a Dask cluster: one task per group of particles
(:mod:`relion_py.runtime.partition`), each returning its group's sum, a partial Fourier accumulator in double
precision; the client adds the sums in group order, exactly as the single-process run adds its own, then
writes the checkpoints and the maps. The files are the single-process run's, byte for byte, whatever the
number of workers and the order in which the tasks run."""
import os

from ..programs.reconstruct_images import ImageReconstruction, reconstruct_images
from ..programs.reconstruct_particle import ParticleReconstruction, reconstruct_particle
from ..runtime.cluster_options import cluster_defaults
from ..runtime.partition import OrderedReduction
from .cluster import connect, ordered_results, start_mpi, worker_run


def reconstruct_particle_on_cluster(opts, command=None):
    """:func:`relion_py.programs.reconstruct_particle.reconstruct_particle` with its groups summed as Dask
    tasks."""
    worker_opts, sum_groups = _cluster_sums(opts, sum_particle_group)
    return reconstruct_particle(worker_opts, command, sum_groups=sum_groups)


def reconstruct_images_on_cluster(opts):
    """:func:`relion_py.programs.reconstruct_images.reconstruct_images` with its groups summed as Dask tasks."""
    worker_opts, sum_groups = _cluster_sums(opts, sum_image_group)
    return reconstruct_images(worker_opts, sum_groups=sum_groups)


def _cluster_sums(opts, task):
    """The workers' options (without the cluster flags) and the ``sum_groups`` of a program: ``task`` run on the
    cluster for every group, the sums yielded in group order."""
    if opts.mpi:
        start_mpi()
    worker_opts = cluster_defaults(opts)
    cwd = os.getcwd()

    def sum_groups(run, groups):
        with connect(opts) as client:
            yield from ordered_results(client, task, [(worker_opts, cwd, g) for g in groups], "backproject")
    return worker_opts, sum_groups


def sum_particle_group(opts, cwd, group):
    """The task: the sum of one group of a tilt-series reconstruction (tomogram, first batch, end batch)."""
    run = worker_run(opts, cwd, _ParticleWorker)
    out = run.reconstruction.accumulator()
    return run.reconstruction.sum_group(group, out, run.reduction)


def sum_image_group(opts, cwd, group):
    """The task: the sum of one group (first particle, end particle) of an image-mode reconstruction."""
    run = worker_run(opts, cwd, ImageReconstruction)
    out = run.accumulator()
    return run.sum_group(group, out)


class _ParticleWorker:
    """What a worker keeps between the tasks of one tilt-series reconstruction."""

    def __init__(self, opts):
        self.reconstruction = ParticleReconstruction(opts)
        self.reduction = OrderedReduction(self.reconstruction.accumulator(),
                                          min(self.reconstruction.n_acc, self.reconstruction.threads))

    def close(self):
        self.reconstruction.close()
