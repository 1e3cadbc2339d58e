"""relion-py-reconstruct on a Dask cluster (both modes) writes exactly the single-process run's files: the group
sums computed by worker processes are added by the client in the single-process order, whatever the number of
workers, the order in which tasks finish, or a worker killed mid-run."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_helpers import assert_same_files, run_killing_a_worker, scheduler_and_worker, without_time_stamp
from conftest import mirror_fixtures, working_directory
from relion_py.cli.reconstruct import main

pytest.importorskip("distributed")

TILT_SERIES = ["--i", "project/optimisation_set.star", "--b", "24", "--j", "1"]
IMAGES = {"spa2d": ["--i", "synthetic/spa2d/particles.star", "--ctf"],
          "3d_rot": ["--i", "e_subtomo_3d/particles.star", "--3d_rot", "--ctf"]}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """2 tomograms of 80 particles: 2 groups of batches each (4 tasks), half sets."""
    from relion_py.tools.simulate import SimulationParams, simulate, write_relion_project
    root = tmp_path_factory.mktemp("simulated")
    write_relion_project(simulate(SimulationParams(n_tomograms=2, n_particles=80, tilt_range="-45,45,15")),
                         str(root))
    star = root / "project/particles.star"       # half sets 1, 2, 1, 2, ...
    lines, k = [], 0
    for line in star.read_text().splitlines():
        if line.startswith("_rlnOpticsGroup #9"):
            line += "\n_rlnRandomSubset #10"
        elif line.strip().startswith("TS_"):
            line += f" {k % 2 + 1}"
            k += 1
        lines.append(line)
    star.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def project(simulated, tmp_path):
    """The simulated project, linked into a fresh folder for the outputs."""
    (tmp_path / "project").symlink_to(simulated / "project")
    return tmp_path


def test_the_project_has_several_groups(project):
    from relion_py.programs.reconstruct_particle import ParticleReconstruction, ReconstructParticleOptions
    with working_directory(project):
        run = ParticleReconstruction(ReconstructParticleOptions(i="project/optimisation_set.star", b=24))
        groups = [g for tt in range(len(run.tomograms)) for g in run.groups(tt)]
        run.close()
    assert len(groups) == 4


def run_twice(argv, cluster_flags, out):
    """The single-process run into ``out`` (then renamed with the suffix .single) and the cluster run into
    ``out``: the same command line but for the cluster flags."""
    assert main(argv + ["--o", out]) == 0
    os.rename(out.rstrip("/"), out.rstrip("/") + ".single")
    assert main(argv + ["--o", out] + cluster_flags) == 0


@pytest.mark.parametrize("extra", [[], ["--crop", "16", "--sym", "C2"]], ids=["plain", "crop_sym"])
def test_tilt_series_on_two_local_workers(project, extra):
    with working_directory(project):
        run_twice(TILT_SERIES + extra, ["--workers", "2"], "out/")
    assert_same_files(project / "out.single", project / "out")


@pytest.mark.parametrize("mode", sorted(IMAGES))
def test_images_on_two_local_workers(tmp_path, mode):
    work = mirror_fixtures(tmp_path / "project", "none")
    (work / "rec").mkdir()
    with working_directory(work):
        assert main(IMAGES[mode] + ["--verb", "0", "--o", "rec/single.mrc"]) == 0
        assert main(IMAGES[mode] + ["--verb", "0", "--o", "rec/cluster.mrc", "--workers", "2"]) == 0
    assert without_time_stamp(work / "rec/single.mrc") == without_time_stamp(work / "rec/cluster.mrc")


def test_scheduler_file_and_only_do_unfinished(project, tmp_path):
    """A scheduler and worker started from the command line (as dask-jobqueue does); --only_do_unfinished
    resumes on the cluster from a checkpoint exactly as the single-process run resumes from it."""
    scheduler_file = tmp_path / "scheduler.json"
    with scheduler_and_worker(scheduler_file):
        with working_directory(project):
            run_twice(TILT_SERIES, ["--scheduler_file", str(scheduler_file)], "out/")
            assert_same_files(project / "out.single", project / "out")
            # a run stopped after its first tomogram: a checkpoint of tomogram 0 in temp/ (here the sums of a
            # --no_recon run, renamed: any checkpoint will do, the two resumed runs must agree)
            os.makedirs("partial/temp")
            assert main(TILT_SERIES + ["--o", "first/", "--no_recon"]) == 0
            for name in os.listdir("first/temp"):
                shutil.copy(Path("first/temp") / name, Path("partial/temp") / name.replace("sum_1_", "sum_0_"))
            assert len(os.listdir("partial/temp")) == 4
            shutil.copytree("partial", "partial.copy")
            resume = TILT_SERIES + ["--only_do_unfinished", "--o", "partial/"]
            assert main(resume) == 0
            os.rename("partial", "partial.single")
            os.rename("partial.copy", "partial")
            assert main(resume + ["--scheduler_file", str(scheduler_file)]) == 0
    assert_same_files(project / "partial.single", project / "partial")


def slow_identity(k, n):
    """A task that finishes in the reverse order of submission."""
    time.sleep(0.05 * (n - k))
    return k


def test_results_come_in_submission_order():
    from distributed import Client, LocalCluster

    from relion_py.distributed.cluster import ordered_results
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert list(ordered_results(client, slow_identity, [(k, 8) for k in range(8)], "test")) == list(range(8))


def test_worker_killed_mid_run(project):
    """SIGKILL a worker while it sums a group: Dask recomputes the lost task, and the maps are the
    single-process ones."""
    with working_directory(project):
        assert main(TILT_SERIES + ["--o", "out/"]) == 0
        os.rename("out", "out.single")
        status, killed = run_killing_a_worker(main, TILT_SERIES + ["--o", "out/"])
    assert killed, "the run ended before a worker could be killed"
    assert status == 0
    assert_same_files(project / "out.single", project / "out")


def test_failing_task_gives_the_single_process_error(tmp_path, capsys):
    work = mirror_fixtures(tmp_path / "project", "none")
    (work / "rec").mkdir()
    bad = work / "bad.star"
    bad.write_text((work / "synthetic/spa2d/particles.star").read_text().replace("particles.mrcs", "missing.mrcs"))
    errors = []
    with working_directory(work):
        for cluster_flags in ([], ["--workers", "2"]):
            assert main(["--i", "bad.star", "--o", "rec/map.mrc", "--verb", "0"] + cluster_flags) == 1
            errors.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert errors[0] == errors[1]
    assert not (work / "rec" / "map.mrc").exists()


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs OpenMPI's mpirun (.ci/run installs openmpi-bin)")
def test_mpirun(project):
    """mpirun -n 4 relion-py-reconstruct --mpi (relion_tomo_reconstruct_particle_mpi's launch)."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    program = str(Path(sys.executable).parent / "relion-py-reconstruct")
    with working_directory(project):
        assert main(TILT_SERIES + ["--o", "out/"]) == 0
        os.rename("out", "out.single")
        done = subprocess.run(["mpirun", "-n", "4", "--oversubscribe", program] + TILT_SERIES
                              + ["--o", "out/", "--mpi"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_files(project / "out.single", project / "out")
