"""Make the benchmark project from the repository alone: ``<root>/project``, a RELION 5 project of the size
of RELION's performance anchors (bench/relion_anchors.json): 2 tilt series (TS_01, TS_02) of 41 tilts
(-60°..+60° in 3° steps, dose-symmetric, 3 e/Å² each) of 1024² px at 4 Å/px, 30 000 Å defocus, tomograms
1024×1024×300 px, 1200 chiral particles of 160 Å per tomogram, made by ``relion_py.tools.simulate``.

    python bench/make_project.py /path/to/bench_root
    RELION_PY_BENCH_ROOT=/path/to/bench_root pytest bench/ --benchmark-enable -s

The anchors were timed on a project of these sizes made by another generator (same geometry, CTF and dose
model; other particle images and noise), so RELION's times apply to this one as well.
"""
import argparse
import sys
import time

from relion_py.tools.simulate import SimulationParams, simulate, write_relion_project

ANCHOR_PROJECT = dict(seed=2025, n_tomograms=2, n_particles=1200, pixel_size=4.0, image_size="1024,1024",
                      tomo_size="1024,1024,300", tilt_range="-60,60,3", dose_per_tilt=3.0, defocus=30000.0,
                      particle_diameter=160.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="bench root: the project is written to <root>/project")
    parser.add_argument("--n_particles", type=int, default=ANCHOR_PROJECT["n_particles"],
                        help="particles per tomogram (default: the anchors' %(default)s)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    sim = simulate(SimulationParams(**{**ANCHOR_PROJECT, "n_particles": args.n_particles}))
    write_relion_project(sim, args.root)
    print(f"wrote {args.root}/project ({args.n_particles} particles per tomogram) in "
          f"{time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
