"""relion-py-reconstruct in image mode (relion_reconstruct): wall time and memory next to RELION 5.0.1's.

    pytest bench/bench_reconstruct_images.py --benchmark-enable -s
    RELION_PY_BENCH_ROOT=/path/to/bench_root pytest bench/bench_reconstruct_images.py --benchmark-enable -s

* ``test_bench_3drot``: RELION's bench case e (2393 pseudo-subtomograms of 96³, ``--3d_rot --ctf``, RELION
  106.67 s on one thread) when ``<bench_root>/b_subtomo3d/particles.star`` exists (relion_tomo_subtomo's 3-D
  output of the bench project, 17 GB).
* ``test_synthetic_3drot``: the same kind of input, made up here (RELION_PY_BENCH_3D_N pseudo-subtomograms of
  96³ with CTF² + multiplicity weights, default 96, about 0.7 GB in a temporary folder): time per particle and
  the projection to 2393 particles.
* ``test_stage_breakdown``: where the time per pseudo-subtomogram goes (one thread, page cache warm); the
  figures are in ``bench/reconstruct_images.md``.
* ``test_fixture_spa2d``: the 2-D single-particle fixture case (240 images of 48²).
"""
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import bench_root, cli, relion_anchor, relion_binary, report, timed_run

FIXTURES = Path(__file__).parent.parent / "tests" / "data" / "fixtures"
BENCH_PARTICLES = 2393          # particles of the bench project's relion_tomo_subtomo output


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_3drot(benchmark, threads):
    root = bench_root()
    if not (root / "b_subtomo3d" / "particles.star").exists():
        pytest.skip("needs <bench_root>/b_subtomo3d/ (relion_tomo_subtomo --b 128 --crop 96 output)")
    out = root / f"relion_py_e_reconstruct_3drot_j{threads}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    argv = [cli("relion-py-reconstruct"), "--i", "b_subtomo3d/particles.star", "--o", f"{out.name}/rec.mrc",
            "--3d_rot", "--ctf", "--j", str(threads)]
    wall, rss = benchmark.pedantic(lambda: timed_run(argv, cwd=root), rounds=1, iterations=1)
    relion_wall, relion_rss = relion_anchor("e_reconstruct_3drot")
    figures = dict(threads=threads, wall_s=wall, peak_rss_mib=rss, relion_wall_s=relion_wall,
                   speedup_vs_relion_anchor=relion_wall / wall, relion_peak_rss_mib=relion_rss)
    if relion_binary("relion_reconstruct"):
        ref = root / "relion_e_reconstruct_3drot"
        ref.mkdir(exist_ok=True)
        rwall, _ = timed_run(["relion_reconstruct", "--i", "b_subtomo3d/particles.star", "--o",
                              f"{ref.name}/rec.mrc", "--3d_rot", "--ctf"], cwd=root)
        figures.update(relion_measured_wall_s=rwall, speedup_vs_relion_measured=rwall / wall)
    report(benchmark, **figures)


def _write_pseudo_subtomograms(folder, n, box, seed=1):
    """n random pseudo-subtomograms as relion_tomo_subtomo writes them (data + CTF²/multiplicity weights)."""
    from relion_py.io.mrc import write_mrc
    rng = np.random.default_rng(seed)
    rows = []
    (folder / "Subtomograms").mkdir()
    for p in range(n):
        write_mrc(folder / "Subtomograms" / f"{p}_data.mrc", rng.standard_normal((box,) * 3, np.float32), 4.0)
        weights = rng.random((2 * box, box, box // 2 + 1), np.float32)
        write_mrc(folder / "Subtomograms" / f"{p}_weights.mrc", weights, 0.25)
        rot, psi = rng.uniform(-180, 180, 2)
        tilt = np.degrees(np.arccos(rng.uniform(-1, 1)))
        rows.append(f"TS_01/{p} {rot:.6f} {tilt:.6f} {psi:.6f} 1 {p % 2 + 1} Subtomograms/{p}_data.mrc "
                    f"Subtomograms/{p}_weights.mrc 0.0 0.0 0.0")
    labels = ["rlnTomoParticleName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOpticsGroup",
              "rlnRandomSubset", "rlnImageName", "rlnCtfImage", "rlnOriginXAngst", "rlnOriginYAngst",
              "rlnOriginZAngst"]
    (folder / "particles.star").write_text(
        "\n# version 50001\n\ndata_general\n\n_rlnTomoSubTomosAre2DStacks 0\n\n"
        "\n# version 50001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
        "_rlnSphericalAberration #3\n_rlnVoltage #4\n_rlnAmplitudeContrast #5\n"
        "_rlnCtfDataAreCtfPremultiplied #6\n_rlnImageDimensionality #7\n_rlnImagePixelSize #8\n"
        "_rlnImageSize #9\n"
        f"1 opticsGroup1 2.7 300 0.1 1 3 4.0 {box}\n"
        "\n\n# version 50001\n\ndata_particles\n\nloop_\n"
        + "".join(f"_{label} #{k + 1}\n" for k, label in enumerate(labels)) + "\n".join(rows) + "\n")


@pytest.mark.parametrize("threads", [1, 2])
def test_synthetic_3drot(benchmark, threads):
    n = int(os.environ.get("RELION_PY_BENCH_3D_N", "96"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_pseudo_subtomograms(folder, n, 96)
        (folder / "out").mkdir()
        argv = [cli("relion-py-reconstruct"), "--i", "particles.star", "--o", "out/rec.mrc", "--3d_rot",
                "--ctf", "--j", str(threads), "--verb", "0"]
        timed_run(argv[:2] + ["--help"], cwd=folder)                   # imports warm, JIT cache filled
        small = timed_run(argv + ["--subset", "1"], cwd=folder)[0]     # half the particles: fixed costs
        wall, rss = benchmark.pedantic(lambda: timed_run(argv, cwd=folder), rounds=1, iterations=1)
    per_particle = (wall - small) / (n - n // 2)
    fixed = wall - per_particle * n
    projected = fixed + per_particle * BENCH_PARTICLES
    relion_wall, relion_rss = relion_anchor("e_reconstruct_3drot")
    report(benchmark, threads=threads, particles=n, wall_s=wall, peak_rss_mib=rss,
           ms_per_particle=1e3 * per_particle, fixed_s=fixed, projected_bench_wall_s=projected,
           relion_bench_wall_s=relion_wall, projected_speedup=relion_wall / projected)


def test_stage_breakdown(benchmark):
    """ms per particle of each stage of ``GridInsertion.insert`` for 96³ pseudo-subtomograms: prepare (read
    the data and weights, convert, FFT, shift, CTF weights; of which the reads and the FFT, timed apart),
    resolve (the voxel loop of backrotate3D), place (the entries sorted by slab into the batch buffer) and
    insert (the batch added to the grid slab by slab, per particle); and, for comparison, direct: the same
    particles inserted one by one without the entry buffer (``backrotate_3d``, RELION's way), what the buffer's
    memory buys."""
    import time
    import scipy.fft
    from relion_py.io.particle_images import image_path
    from relion_py.io.mrc import read_mrc_data
    from relion_py.programs.reconstruct_images import ImageReconstruction, ReconstructImagesOptions
    n = int(os.environ.get("RELION_PY_BENCH_3D_N", "96"))
    times = dict(prepare=0.0, of_which_reads=0.0, of_which_fft=0.0, resolve=0.0, place=0.0, insert=0.0,
                 direct=0.0)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        _write_pseudo_subtomograms(Path(tmp), n, 96)
        os.chdir(tmp)
        try:
            run = ImageReconstruction(ReconstructImagesOptions(i="particles.star", o="rec.mrc", three_d_rot=True,
                                                               ctf=True))
            inserter, buf, parts = run.insertion.inserter, run.insertion.buf, run.parts
            acc, direct, scratch = run.accumulator(), run.accumulator(), buf.scratch((96, 96, 49))

            def clock(stage, func, *args):
                t0 = time.perf_counter()
                out = func(*args)
                times[stage] += time.perf_counter() - t0
                return out

            def one_pass():
                for p in range(n):
                    f, fctf = clock("prepare", inserter.prepare, p)
                    data = clock("of_which_reads", read_mrc_data, image_path(parts.names[p])[0])
                    clock("of_which_reads", read_mrc_data, image_path(parts.ctf_names[p])[0])
                    clock("of_which_fft", scipy.fft.rfftn, data.astype(np.float64))
                    clock("direct", inserter.insert, p, f, fctf, direct)
                    counts = clock("resolve", inserter.resolve, p, f, fctf, buf, scratch)
                    starts = buf.reserve(counts)
                    if starts is None:
                        clock("insert", buf.insert, acc)
                        starts = buf.reserve(counts)
                    clock("place", buf.place, starts, scratch, counts)
                clock("insert", buf.insert, acc)
            one_pass()                                           # page cache and kernels warm
            times.update(dict.fromkeys(times, 0.0))
            benchmark.pedantic(one_pass, rounds=1, iterations=1)
        finally:
            os.chdir(cwd)
    report(benchmark, particles=n, **{f"{k}_ms": 1e3 * v / n for k, v in times.items()},
           total_ms=1e3 * (times["prepare"] + times["resolve"] + times["place"] + times["insert"]) / n)


def test_fixture_spa2d(benchmark):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "synthetic").symlink_to(FIXTURES / "synthetic")
        (Path(tmp) / "out").mkdir()
        argv = [cli("relion-py-reconstruct"), "--i", "synthetic/spa2d/particles.star", "--o", "out/rec.mrc",
                "--ctf", "--verb", "0"]
        wall, rss = benchmark.pedantic(lambda: timed_run(argv, cwd=tmp), rounds=3, iterations=1)
    report(benchmark, wall_s=wall, peak_rss_mib=rss, relion_wall_s=0.19)
