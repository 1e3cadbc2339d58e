"""relion-py-extract: drop-in for relion_tomo_subtomo."""
import sys

from ..runtime.options import parse_options
from ..programs.subtomo import ExtractOptions, extract_subtomograms
from ..runtime.cluster_options import wants_cluster
from .common import run_cli

PROG = "relion-py-extract"
DESCRIPTION = """Extract particles from tilt series, as RELION 5's relion_tomo_subtomo does, with the same flags
and the same output files: 2-D tilt stacks (--stack2d: <o>/Subtomograms/<particle>_stack2d.mrcs) or 3-D
pseudo-subtomograms (<particle>_data.mrc + _weights.mrc), <o>/particles.star, <o>/optimisation_set.star,
<o>/note.txt. Run it from the RELION project folder (paths in STAR files are relative to it)."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = parse_options(ExtractOptions, argv, PROG, DESCRIPTION)
    return run_cli(PROG, lambda: run_extraction(opts, [PROG] + argv), opts.pipeline_control)


def run_extraction(opts, command):
    """Extract on this process, or on the Dask cluster the cluster flags name."""
    if wants_cluster(opts):
        from ..distributed.extract import extract_on_cluster   # Dask only when asked for (start-up time)
        return extract_on_cluster(opts, command=command)
    return extract_subtomograms(opts, command=command)


if __name__ == "__main__":
    sys.exit(main())
