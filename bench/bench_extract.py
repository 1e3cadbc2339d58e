"""Extraction throughput (particle-tilts per second) next to RELION 5.0.1's, JIT compile time, peak memory:
2-D stacks (a, c) and 3-D pseudo-subtomograms (b).

    RELION_PY_BENCH_ROOT=/path/to/bench_root pytest bench/bench_extract.py --benchmark-enable -s
"""
import os
import shutil

import pytest

from conftest import bench_root, cli, relion_anchor, relion_binary, report, timed_run

STACK2D_ARGS = ["--t", "project/tomograms.star", "--p", "project/particles.star", "--stack2d"]


def count_particle_tilts(particles_star):
    """Visible tilt images written, from rlnTomoVisibleFrames."""
    import starfile
    table = starfile.read(particles_star, always_dict=True)["particles"]
    return int(sum(str(v).count("1") for v in table["rlnTomoVisibleFrames"]))


def figures_next_to_relion(root, case, threads, args, wall, rss, n):
    """relion_py's figures, RELION's anchor for the case (measured at --j 2) and, if relion_tomo_subtomo is
    on PATH, RELION run on the same data with the same arguments and threads."""
    figures = dict(case=case, threads=threads, wall_s=wall, particle_tilts=n, particle_tilts_per_s=n / wall,
                   peak_rss_mib=rss)
    relion_wall, relion_rss = relion_anchor(case)
    if threads == 2:
        figures.update(relion_wall_s=relion_wall, relion_particle_tilts_per_s=n / relion_wall,
                       speedup_vs_relion_anchor=relion_wall / wall, relion_peak_rss_mib=relion_rss)
    if relion_binary("relion_tomo_subtomo"):
        ref = root / f"relion_{case}_j{threads}"
        shutil.rmtree(ref, ignore_errors=True)
        rwall, _ = timed_run(["relion_tomo_subtomo", *args, "--o", f"{ref.name}/", "--j", str(threads)], cwd=root)
        figures.update(relion_measured_wall_s=rwall, speedup_vs_relion_measured=rwall / wall)
        shutil.rmtree(ref, ignore_errors=True)
    return figures


@pytest.mark.parametrize("threads", [2, 1])
@pytest.mark.parametrize("case,args", [
    ("a_subtomo_stack2d", ["--b", "128", "--crop", "96"]),
    ("c_subtomo_stack2d_bin2", ["--b", "64", "--crop", "48", "--bin", "2"]),
])
def test_stack2d_throughput(benchmark, case, args, threads):
    root = bench_root()
    out = root / f"relion_py_{case}_j{threads}"

    def run():
        shutil.rmtree(out, ignore_errors=True)
        return timed_run([cli("relion-py-extract"), *STACK2D_ARGS, *args, "--o", f"{out.name}/", "--j", str(threads)],
                         cwd=root)

    wall, rss = benchmark.pedantic(run, rounds=1, iterations=1)
    n = count_particle_tilts(out / "particles.star")
    figures = figures_next_to_relion(root, case, threads, [*STACK2D_ARGS, *args], wall, rss, n)
    shutil.rmtree(out, ignore_errors=True)
    report(benchmark, **figures)


def count_3d_particle_tilts(root, particles_star):
    """Visible tilt images inserted into the pseudo-subtomograms: the visibility test of the extraction
    (radius bin·crop/2), recomputed for the particles written to ``particles_star``."""
    import starfile
    from relion_py.project.particles import ParticleSet
    from relion_py.project.tomograms import TomogramSet
    from relion_py.tomography.particle_tilts import particle_geometry
    written = set(starfile.read(particles_star, always_dict=True)["particles"]["rlnTomoParticleName"].astype(str))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        tomograms = TomogramSet("project/tomograms.star")
        particles = ParticleSet("project/particles.star", tomograms)
        names = particles.table["rlnTomoParticleName"].astype(str).to_numpy()
        total = 0
        for tomo in tomograms:
            rows = [r for r in particles.rows_of(tomo.name) if names[r] in written]
            if rows:
                total += int(particle_geometry(particles, rows, tomo, True, 96 / 2.0).visible.sum())
        tomograms.close()
    finally:
        os.chdir(cwd)
    return total


@pytest.mark.parametrize("threads", [2, 1])
def test_subtomo_3d_throughput(benchmark, threads):
    """3-D pseudo-subtomograms (b_subtomo_3d: --b 128 --crop 96): RELION writes ~17 GB here (7 MB per
    particle); the output is deleted after the run."""
    case = "b_subtomo_3d"
    root = bench_root()
    free = shutil.disk_usage(root).free
    if free < 25 * 2**30:
        pytest.skip(f"needs ~17 GB of free disk for the 3-D outputs ({free / 2**30:.0f} GB free)")
    out = root / f"relion_py_{case}_j{threads}"
    args = ["--t", "project/tomograms.star", "--p", "project/particles.star", "--b", "128", "--crop", "96"]

    def run():
        shutil.rmtree(out, ignore_errors=True)
        return timed_run([cli("relion-py-extract"), *args, "--o", f"{out.name}/", "--j", str(threads)], cwd=root)

    try:
        wall, rss = benchmark.pedantic(run, rounds=1, iterations=1)
        n = count_3d_particle_tilts(root, out / "particles.star")
        figures = figures_next_to_relion(root, case, threads, args, wall, rss, n)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    report(benchmark, **figures)
