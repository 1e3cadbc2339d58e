"""relion-py-portal: a RELION 5 project from CryoET Data Portal runs, optionally extracted in one go."""
import os
import sys
import time

from ..runtime.log import info
from ..runtime.options import parse_options
from ..portal import PortalOptions, make_portal_project
from ..programs.subtomo import ExtractOptions
from ..runtime.cluster_options import wants_cluster
from .common import run_cli
from .extract import run_extraction

PROG = "relion-py-portal"
DESCRIPTION = """Write a RELION 5 project (tomograms.star, tilt_series/*.star, particles.star with one optics
group per tilt series, optimisation_set.star) for point annotations of CryoET Data Portal runs, or (--copick)
for the picks of a copick project. Only metadata
and annotation files are downloaded: relion-py-extract / relion-py-reconstruct read only the chunks they need from
the tilt series' OME-Zarr URL; RELION reads the geometry from header-only MRC stacks (no pixels). --download
writes the tilt series as local MRC stacks that every RELION program reads.
Flags may be written with '-' or '_' (--inexact-match = --inexact_match)."""
EPILOG = """one-shot extraction: relion-py-extract options after '--' extract the particles right away
(--i is the new optimisation set), e.g.
  relion-py-portal --run_ids 101,102 --object "cytosolic ribosome" --ground_truth --o Portal/ \\
      -- --o Extract/ --b 64 --crop 48 --stack2d"""


def _underscored(argv):
    """``--inexact-match[=v]`` → ``--inexact_match[=v]`` (flag names only)."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = flag.replace("-", "_").replace("__", "--", 1) + eq + value
        out.append(arg)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    portal_argv, extract_argv = _underscored(argv[:split]), _underscored(argv[split + 1:])
    opts = parse_options(PortalOptions, portal_argv, PROG, DESCRIPTION, EPILOG)
    if split < len(argv):
        bad = [a for a in extract_argv if a.split("=")[0] in ("--i", "--p", "--t")]
        if bad:
            print(f"{PROG}: error: {bad[0]} after '--': the particles and tomograms are the portal project's",
                  file=sys.stderr)
            return 2
        extract_opts = parse_options(ExtractOptions, extract_argv, "relion-py-extract",
                                     "relion-py-extract options (after '--')")

    if opts.average and split == len(argv):
        print(f"{PROG}: error: --average needs relion-py-extract's options after '--' (at least --o and --b)",
              file=sys.stderr)
        return 2

    def run():
        stages, start = {}, time.monotonic()
        if split < len(argv) and wants_cluster(extract_opts) and extract_opts.mpi:
            from ..distributed.cluster import start_mpi
            start_mpi()   # before the portal project is made: only the client (rank 1) makes it
        project = make_portal_project(opts, command=[PROG] + argv)
        if opts.dry_run:
            return
        info(f"wrote {project.optimisation_set}: {len(project.tomograms)} tilt series, "
             f"{project.n_particles} particles" + (f"; {len(project.skipped)} run(s) left out for incomplete "
                                                   "metadata (see the warnings)" if project.skipped else ""))
        stages["portal project"] = time.monotonic() - start
        if split < len(argv):
            extract_opts.i = project.optimisation_set
            start = time.monotonic()
            run_extraction(extract_opts, command=["relion-py-extract"] + extract_argv
                           + ["--i", project.optimisation_set])
            stages["extraction"] = time.monotonic() - start
        if opts.average:
            from ..programs.portal_average import average
            average(extract_opts, os.path.join(opts.o, "Average/"), stages)
            info(f"wrote {os.path.join(opts.o, 'Average', 'summary.md')}")
    return run_cli(PROG, run, extract_opts.pipeline_control if split < len(argv) else "")


if __name__ == "__main__":
    sys.exit(main())
