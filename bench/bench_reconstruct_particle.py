"""Reconstruction from the tilt series (relion_tomo_reconstruct_particle) next to RELION 5.0.1's time, at 1
and 2 threads, with peak memory and tilt images backprojected per second.

    RELION_PY_BENCH_ROOT=/path/to/bench_root pytest bench/bench_reconstruct_particle.py --benchmark-enable -s

The RELION anchor (bench/relion_anchors.json, case d_reconstruct_particle) was measured with --j 2 --j_out 2
--j_in 1; the 1-thread run uses --j 1 --j_out 1 --j_in 1. If relion_tomo_reconstruct_particle is installed,
it is timed too, with the same arguments.
"""
import os
import shutil

import pytest

from conftest import bench_root, cli, relion_anchor, relion_binary, report, timed_run

CASE = "d_reconstruct_particle"
ARGS = ["--t", "project/tomograms.star", "--p", "project/particles.star", "--b", "128", "--crop", "96"]


def thread_args(threads):
    return ["--j", str(threads), "--j_out", str(threads), "--j_in", "1"]


def count_tilt_images(root):
    """Tilt images backprojected (visible frames, RELION's visibility rule with radius --b/2)."""
    from relion_py.project.particles import ParticleSet
    from relion_py.project.tomograms import TomogramSet
    from relion_py.tomography.particle_tilts import particle_geometry
    old = os.getcwd()
    os.chdir(root)
    try:
        tomograms = TomogramSet("project/tomograms.star")
        particles = ParticleSet("project/particles.star", tomograms)
        total = 0
        for tomo in tomograms:
            rows = particles.rows_of(tomo.name)
            if len(rows):
                total += int(particle_geometry(particles, rows, tomo, True, 64.0).visible.sum())
        tomograms.close()
        return total
    finally:
        os.chdir(old)


@pytest.mark.parametrize("threads", [2, 1])
def test_reconstruct_particle_time(benchmark, threads):
    root = bench_root()
    out = root / f"relion_py_{CASE}_j{threads}"

    def run():
        shutil.rmtree(out, ignore_errors=True)
        return timed_run([cli("relion-py-reconstruct"), *ARGS, *thread_args(threads), "--o", f"{out.name}/"],
                         cwd=root)

    wall, rss = benchmark.pedantic(run, rounds=1, iterations=1)
    assert (out / "merged.mrc").exists()
    n = count_tilt_images(root)
    figures = dict(case=CASE, threads=threads, wall_s=wall, tilt_images=n, tilt_images_per_s=n / wall,
                   peak_rss_mib=rss)
    relion_wall, relion_rss = relion_anchor(CASE)
    if threads == 2:  # the anchor was measured with --j 2 --j_out 2 --j_in 1
        figures.update(relion_wall_s=relion_wall, speedup_vs_relion_anchor=relion_wall / wall,
                       relion_peak_rss_mib=relion_rss)
    if relion_binary("relion_tomo_reconstruct_particle"):
        ref = root / f"relion_{CASE}_j{threads}"
        shutil.rmtree(ref, ignore_errors=True)
        rwall, _ = timed_run(["relion_tomo_reconstruct_particle", *ARGS, *thread_args(threads),
                              "--o", f"{ref.name}/"], cwd=root)
        figures.update(relion_measured_wall_s=rwall, speedup_vs_relion_measured=rwall / wall)
        shutil.rmtree(ref, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    report(benchmark, **figures)
